"""What `visionbench models` lists: the registered models a pattern matches, each with its parameter count and
forward FLOPs per image at one input size, or why it cannot take that size."""

from __future__ import annotations

import dataclasses

from visionbench.errors import UserError
from visionbench.models._builder import create_model, inspect_model
from visionbench.registry import MODELS


def parse_size(text: str) -> tuple[int, int, int]:
    """'1x28x28' -> (1, 28, 28); anything else is a UserError."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdecimal() and int(p) > 0 for p in parts):  # isdigit() takes '²'
        raise UserError(f"--input-size: expected CxHxW such as 3x32x32, got {text!r}")
    return tuple(int(p) for p in parts)


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """A model's figures at one input size; `problem` (and no figures) when it cannot take that size."""

    name: str
    params: int | None = None
    flops: int | None = None
    problem: str = ""


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
            model = create_model(name, num_outputs, in_chans=size[0], img_size=size[1:])
            params, flops = inspect_model(model, size, name)
        except (UserError, ValueError) as e:
            figures.append(ModelFigures(name, problem=f"cannot take {input_size}: {str(e).split(': ')[-1][:60]}"))
            continue
        if max_params is None or params <= max_params:
            figures.append(ModelFigures(name, params, flops))
    return figures
