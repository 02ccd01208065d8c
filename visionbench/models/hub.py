"""The libraries' own ImageNet weights (`model.pretrained: imagenet`): which weights a model name takes, and their
tensors.

`imagenet_weights(model_name)` answers for `timm:<name>` models and for the registered names built from a timm
architecture (TIMM_SOURCES).
"""

from __future__ import annotations

import torch

from visionbench.errors import UserError, first_line

# registered zoo names built from a timm architecture -> that architecture (for model.pretrained: imagenet)
TIMM_SOURCES = {
    "vgg16": "vgg16",
    "vgg16_bn": "vgg16_bn",
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "mobilenetv2": "mobilenetv2_100",
    "vit_r50_hybrid": "vit_base_r50_s16_224",
}


def imagenet_weights(model_name: str, tag: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet weights of `model_name`'s architecture as a state_dict, and how to name them in messages;
    `tag` (from `imagenet:<tag>`) picks one of several (not implemented yet: None only)."""
    timm_name = model_name.removeprefix("timm:") if model_name.startswith("timm:") else TIMM_SOURCES.get(model_name)
    if timm_name is None:
        raise UserError(
            f"model.pretrained: no ImageNet weights are known for {model_name!r}; expected a timm:<name> model or one "
            f"of {', '.join(TIMM_SOURCES)}"
        )
    import timm

    try:
        reference = timm.create_model(timm_name, pretrained=True)
    except Exception as e:  # no network, no hub weights, a hub error: all one line
        raise UserError(
            f"model.pretrained: timm weights for {timm_name!r} could not be fetched ({first_line(e)}); offline, "
            "give a .safetensors file or a run directory instead"
        ) from None
    return reference.state_dict(), f"timm weights of {timm_name}"
