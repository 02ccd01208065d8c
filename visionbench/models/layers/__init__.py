"""Building blocks shared by the model families in `visionbench.models` (timm's `layers/` in miniature).

Blocks that timm already provides (DropBlock2d, DropPath, ...) are imported from `timm.layers`, not rewritten.
"""

from visionbench.models.layers.create_act import get_act_layer

__all__ = ["get_act_layer"]
