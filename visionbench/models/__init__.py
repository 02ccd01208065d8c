"""Model zoo: importing this package registers every family in MODELS."""

from visionbench.models import cnn_t, cvt, fastnet, resnet_cfg, small_cnn, zoo  # noqa: F401  (registration side effects)
from visionbench.models._builder import count_params, create_model, inspect_model, inspect_on_meta

__all__ = ["create_model", "count_params", "inspect_model", "inspect_on_meta"]
