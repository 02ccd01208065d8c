"""Model zoo: importing this package registers every family in MODELS."""

from visionbench.models import cnn_t, cvt, fastnet, resnet_cfg, small_cnn, zoo  # noqa: F401  (registration side effects)
from visionbench.models._builder import (
    count_flops,
    count_params,
    create_model,
    inspect_model,
    inspect_on_meta,
    token_grid,
)
from visionbench.models._catalog import ModelFigures, measure_models, parse_size

__all__ = [
    "ModelFigures",
    "count_flops",
    "create_model",
    "count_params",
    "inspect_model",
    "inspect_on_meta",
    "measure_models",
    "parse_size",
    "token_grid",
]
