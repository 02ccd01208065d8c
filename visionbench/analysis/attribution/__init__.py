"""Attribution maps for a batch of images: captum's gradient methods, pytorch-grad-cam's Grad-CAM and Grad-CAM++,
and our attention rollout, one module each, registered in ATTRIBUTIONS under the name `explain --method` takes.

- Targets are output indices, one per image: the predicted or true class, a label for multi-label, 0 (the output
  itself) for regression.
- `attribute` returns raw attributions (B, C, H, W) for captum's methods and maps (B, H, W) in [0, 1] for the CAMs
  and rollout; `to_maps` turns either into (B, H, W) maps in [0, 1] for display.

A new method is one module here, a registered `Attribution` subclass (`_base.py`: `CaptumMethod` and
`GradCAMMethod` wrap the two libraries in a few lines), plus its name in the import line below; explain's help, its
validation and the tests (tests/analysis/test_attribution.py) then take it up.
"""

from visionbench.analysis.attribution import (  # noqa: F401  (registration side effects)
    attention_rollout,
    deeplift,
    gradcam,
    gradcam_plus_plus,
    integrated_gradients,
    saliency,
    smoothgrad,
)
from visionbench.analysis.attribution._base import Attribution, attribute, check_method, to_maps
from visionbench.registry import ATTRIBUTIONS

__all__ = ["ATTRIBUTIONS", "Attribution", "attribute", "check_method", "to_maps"]
