"""`create_model` and the model contract every registered architecture follows (../STYLE.md §5).

Contract: builder signature `(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs)
-> nn.Module` (`img_size` is (H, W), timm's name for it); the module has
`forward_features(x)`, `forward_head(features) -> (B, num_outputs)`, `num_features`, `reset_head(num_outputs)`,
`cam_layer` (dotted path of the default Grad-CAM layer) and `feature_layout` ("NCHW" or "NLC").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from visionbench.errors import UserError, first_line
from visionbench.registry import MODELS

CONTRACT = ("forward_features", "forward_head", "num_features", "reset_head", "cam_layer", "feature_layout")


def create_model(
    name: str, num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs
) -> nn.Module:
    """Build a registered model, any timm model as `timm:<name>`, or a torchvision one as `torchvision:<name>`.

    A kwarg of `None` means "the architecture's own default" and is dropped before the call (as timm does).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith("timm:"):
        from visionbench.models.timm_adapter import create_timm_model

        return create_timm_model(
            name.removeprefix("timm:"), num_outputs=num_outputs, in_chans=in_chans, img_size=img_size, **kwargs
        )
    if name.startswith("torchvision:"):
        from visionbench.models.torchvision_adapter import create_torchvision_model

        return create_torchvision_model(
            name.removeprefix("torchvision:"), num_outputs=num_outputs, in_chans=in_chans, img_size=img_size, **kwargs
        )
    builder = MODELS.get(name)
    try:
        model = builder(num_outputs=num_outputs, in_chans=in_chans, img_size=tuple(img_size), **kwargs)
    except TypeError as e:  # an unknown or missing model.kwargs entry
        raise UserError(f"model.kwargs for {name!r}: {e}") from None
    except ValueError as e:  # the builder refuses the input size or a kwarg value
        raise UserError(f"{name}: {e}") from None
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "allocate" not in str(e):  # torch's allocator: "can't allocate memory"
            raise
        size = "x".join(map(str, (in_chans, *img_size)))
        raise UserError(f"{name} with model.kwargs {kwargs} at input size {size}: too large to allocate") from None
    missing = [a for a in CONTRACT if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model {name!r} breaks the model contract: missing {missing}")
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def inspect_model(
    model: nn.Module, input_size: tuple[int, int, int], name: str = "model", flops: bool = True
) -> tuple[int, int | None]:
    """Run one image through the model: return (params, forward FLOPs per image, None unless `flops`).

    Counting FLOPs imports torch._dynamo (torch's dispatch modes need it: about a second on a small CPU), so `train`
    checks the size without counting and counts at the end of the run (`count_flops`).

    Raises a UserError when the model cannot take `input_size` (C, H, W), so a bad size fails before training.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = None
    try:
        x = torch.zeros(1, *input_size, device=device)  # inside: an input too large to allocate is the size's fault
        with contextlib.ExitStack() as stack:
            if flops:
                from torch.utils.flop_counter import FlopCounterMode

                counter = stack.enter_context(FlopCounterMode(display=False))
                # FlopCounterMode counts 0 for the fused attention kernels on CPU: count attention by the math path
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            out = model(x)
    except (RuntimeError, ValueError, AssertionError) as e:
        size = "x".join(map(str, input_size))
        raise UserError(f"{name} cannot take input size {size}: {first_line(e, limit=1000)}") from None
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise TypeError(f"{name} returned shape {tuple(out.shape)}, expected (B, num_outputs)")
    return count_params(model), None if counter is None else int(counter.get_total_flops())


def count_flops(model: nn.Module, input_size: tuple[int, int, int], name: str = "model") -> int:
    """Forward FLOPs per image of `model` at `input_size` (torch's FlopCounterMode)."""
    return inspect_model(model, input_size, name)[1]


def inspect_on_meta(
    build: Callable[[], nn.Module], input_size: tuple[int, int, int], name: str = "model"
) -> tuple[int, int]:
    """(params, forward FLOPs per image) of the model `build()` returns, built and run on the meta device: shapes
    only, no memory for weights and no arithmetic, so a search checks a 100M-parameter candidate in milliseconds.

    Raises a UserError when the model cannot be built with its kwargs or cannot take `input_size`.
    """
    with torch.device("meta"):
        model = build()
    return inspect_model(model, input_size, name)


def token_grid(model: nn.Module) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, (h, w)) of a token model's patch grid: `grid_size` (ours, torchvision's through its adapter) or
    timm's `patch_embed.grid_size`, after `num_prefix_tokens` (class/register tokens).

    Raises:
        TypeError: the model declares neither.
    """
    grid = getattr(model, "grid_size", None)
    if grid is None and hasattr(model, "patch_embed"):
        grid = getattr(model.patch_embed, "grid_size", None)
    if grid is None:
        raise TypeError(f"{type(model).__name__} declares neither grid_size nor patch_embed.grid_size")
    return int(getattr(model, "num_prefix_tokens", 0)), (int(grid[0]), int(grid[1]))


def resolve_module(model: nn.Module, dotted: str) -> nn.Module:
    """The submodule at a dotted path such as `cam_layer` (no eval, unlike grad-cam's tests)."""
    return model.get_submodule(dotted)
