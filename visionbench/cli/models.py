"""`visionbench models [--filter PATTERN] [--input-size CxHxW] [--num-outputs N] [--max-params N]`."""

from __future__ import annotations

import sys

import typer

from visionbench.errors import UserError


def parse_size(text: str) -> tuple[int, int, int]:
    """'1x28x28' -> (1, 28, 28); anything else is a UserError."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdecimal() and int(p) > 0 for p in parts):  # isdigit() takes '²'
        raise UserError(f"--input-size: expected CxHxW such as 3x32x32, got {text!r}")
    return tuple(int(p) for p in parts)


def models(
    filter_: str = typer.Option("*", "--filter", help="fnmatch pattern over registered names, e.g. 'resnet*'."),
    input_size: str = typer.Option("3x32x32", help="CxHxW at which params and FLOPs are counted."),
    num_outputs: int = typer.Option(10, min=1, help="Number of outputs of the head."),
    max_params: float = typer.Option(None, help="Show only models with at most this many parameters."),
) -> None:
    """List registered models with their parameter count and forward FLOPs per image."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from visionbench.models import create_model, inspect_model
    from visionbench.registry import MODELS

    size = parse_size(input_size)
    names = MODELS.list(filter_)
    if not names:
        raise UserError(f"--filter {filter_!r} matches no model{MODELS.suggest(filter_.strip('*'))}")
    table = Table("model", "params", "GFLOPs", "note")
    for name in names:
        try:
            model = create_model(name, num_outputs, in_chans=size[0], img_size=size[1:])
            params, flops = inspect_model(model, size, name)
        except (UserError, ValueError) as e:
            # Text, not str: a name or message with `[red]` or `[/x]` in it is shown as written, not as rich markup
            table.add_row(Text(name), "-", "-", Text(f"cannot take {input_size}: {str(e).split(': ')[-1][:60]}"))
            continue
        if max_params is not None and params > max_params:
            continue
        table.add_row(Text(name), f"{params:,}", f"{flops / 1e9:.4f}", "")
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120).print(table)
