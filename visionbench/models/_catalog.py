"""What `visionbench models` counts: a model's parameters (all of them, and those left trainable) and forward FLOPs per
image at one input size, or why it cannot take that size.

Every model is built and run on the meta device: shapes only, no memory for weights, no arithmetic and no weights
loaded, so ViT-B/16 is counted in a fraction of a second and VGG-16 without its 528 MiB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from visionbench.errors import UserError
from visionbench.models._builder import create_model, inspect_model
from visionbench.registry import MODELS
from visionbench.utils.bounded import memory_bytes, size_text

# What `visionbench models` counts at when neither the command line nor a config says
DEFAULT_INPUT_SIZE = "3x32x32"
DEFAULT_NUM_OUTPUTS = 10


def parse_size(text: str) -> tuple[int, int, int]:
    """'1x28x28' -> (1, 28, 28); anything else is a UserError."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdecimal() and int(p) > 0 for p in parts):  # isdigit() takes '²'
        raise UserError(f"--input-size: expected CxHxW such as 3x32x32, got {text!r}")
    return tuple(int(p) for p in parts)


def size_name(size: tuple[int, ...]) -> str:
    """(3, 32, 32) -> '3x32x32'."""
    return "x".join(map(str, size))


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """A model's figures at one input size. `problem`: why it cannot take that size (then it has no figures), or a
    note on its figures (over a parameter budget)."""

    name: str
    params: int | None = None
    trainable: int | None = None  # after `prepare` (the run's model.freeze): parameters with requires_grad
    flops: int | None = None
    problem: str = ""


def measure(
    name: str,
    build: Callable[[], nn.Module],
    input_size: tuple[int, int, int],
    prepare: Callable[[nn.Module], object] | None = None,
) -> ModelFigures:
    """The figures of the model `build()` returns, built, prepared and run on the meta device.

    Args:
        name: the model's name, for messages.
        build: makes the model; called under `torch.device("meta")`.
        input_size: (C, H, W) of one image.
        prepare: called with the built model (still on meta) before the trainable parameters are counted, e.g.
            to freeze what a run's model.freeze freezes.

    Raises:
        UserError: the model cannot be built or cannot take `input_size`, or its float32 weights alone are more
            than this machine's memory (the figure is in the message).
    """
    with torch.device("meta"):
        model = build()
        if prepare is not None:
            prepare(model)
    params, flops = inspect_model(model, input_size, name)
    total = memory_bytes()
    if total is not None and params * 4 > total:  # meta builds what no allocator would: a run here would fail
        raise UserError(
            f"{name} cannot take input size {size_name(input_size)}: {params:,} parameters need "
            f"{size_text(params * 4)} in float32, more than this machine's memory ({size_text(total)})"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelFigures(name, params, trainable, flops)


def measure_model(name: str, input_size: tuple[int, int, int], num_outputs: int, **kwargs) -> ModelFigures:
    """A registered model, `timm:<name>` or any name `create_model` knows, with builder `kwargs`, at one size."""
    C, H, W = input_size
    return measure(name, lambda: create_model(name, num_outputs, in_chans=C, img_size=(H, W), **kwargs), input_size)


def measure_models(pattern: str, input_size: str, num_outputs: int, max_params: float | None) -> list[ModelFigures]:
    """Every model whose name matches the fnmatch `pattern`, built for `input_size` (CxHxW) and `num_outputs`; those
    over `max_params` are left out, those that cannot take the size are kept with the reason.

    Raises:
        UserError: a size that is not CxHxW, or a pattern that matches no model.
    """
    size = parse_size(input_size)
    names = MODELS.list(pattern)
    if not names:
        raise UserError(f"--filter {pattern!r} matches no model{MODELS.suggest(pattern.strip('*'))}")
    figures = []
    for name in names:
        try:
            model = measure_model(name, size, num_outputs)
        except (UserError, ValueError) as e:
            figures.append(ModelFigures(name, problem=f"cannot take {input_size}: {str(e).split(': ')[-1][:60]}"))
            continue
        if max_params is None or model.params <= max_params:
            figures.append(model)
    return figures
