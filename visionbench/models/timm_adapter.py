"""Any timm architecture as a visionbench model (`create_model("timm:<name>", ...)`), randomly initialised.

timm models already have `forward_features`, `forward_head` and `num_features`; this module sets the rest of the
model contract (`reset_head`, `cam_layer`, `feature_layout`) as attributes on the timm module itself rather than
wrapping it, so state_dict keys stay timm's and timm checkpoints load unchanged. Nothing is ever downloaded.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from visionbench.errors import UserError


def _cam_layer(model: nn.Module) -> str:
    """The last feature stage timm reports (`feature_info[-1]['module']`), else the last nn.Conv2d."""
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        name = feature_info[-1].get("module", "")
        try:
            if name:
                model.get_submodule(name)
                return name
        except AttributeError:
            pass
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise TypeError(f"{type(model).__name__} has no nn.Conv2d to use as cam_layer")
    return convs[-1]


@torch.no_grad()
def _feature_layout(model: nn.Module, in_chans: int, img_size: tuple[int, int]) -> str:
    """'NLC' when forward_features returns tokens (B, N, D), 'NCHW' for a (B, C, H, W) map: one eval-mode probe."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        features = model.forward_features(torch.zeros(1, in_chans, *img_size, device=device))
    finally:
        model.train(was_training)
    return "NLC" if features.ndim == 3 else "NCHW"


def create_timm_model(
    name: str, num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs
) -> nn.Module:
    """Build timm's `name` without pretrained weights and give it the visionbench model contract.

    `img_size` is passed on only to models whose constructor accepts it (ViTs and other fixed-size models);
    the others are fully convolutional and take any size.

    Args:
        name: A timm model name, e.g. 'resnet18' or 'vit_tiny_patch16_224' (a '.tag' suffix is allowed).
        num_outputs: Classifier width (timm's `num_classes`).
        in_chans: Input channels.
        img_size: (H, W) of the inputs.
        **kwargs: Passed to `timm.create_model` (e.g. `drop_rate`, `patch_size`).

    Returns:
        The timm module with `reset_head`, `cam_layer` and `feature_layout` set.

    Raises:
        UserError: for a name timm does not know (naming the closest ones) or kwargs its constructor rejects.
    """
    import timm  # here, not at the top: `timm:<name>` pays for timm's import, the zoo's own models do not

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise UserError(f"unknown timm model {name!r}{hint}")
    img_size = tuple(img_size)
    args = dict(pretrained=False, num_classes=num_outputs, in_chans=in_chans, **kwargs)
    try:
        try:
            model = timm.create_model(name, img_size=img_size, **args)
        except TypeError as e:
            if "img_size" not in str(e):  # only a constructor without `img_size` is retried without it
                raise
            model = timm.create_model(name, **args)
    except (TypeError, ValueError) as e:  # an unknown or mistyped model.kwargs entry, as in create_model
        raise UserError(f"model.kwargs for 'timm:{name}': {e}") from None
    return give_contract(model, in_chans, img_size)


def give_contract(model: nn.Module, in_chans: int, img_size: tuple[int, int], cam_layer: str | None = None):
    """Set `reset_head`, `cam_layer` (default: the last feature stage) and `feature_layout` on a timm model."""
    # A bound method pickles as getattr(model, 'reset_classifier'), so deepcopy (EMA) and torch.save still work.
    model.reset_head = model.reset_classifier
    model.cam_layer = cam_layer or _cam_layer(model)
    model.feature_layout = _feature_layout(model, in_chans, tuple(img_size))
    return model
