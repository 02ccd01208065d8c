"""`visionbench models [--filter PATTERN] [--input-size CxHxW] [--num-outputs N] [--max-params N]`."""

from __future__ import annotations

import sys

import typer


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

    from visionbench.models import measure_models

    table = Table("model", "params", "GFLOPs", "note")
    for model in measure_models(filter_, input_size, num_outputs, max_params):
        # Text, not str: a name or message with `[red]` or `[/x]` in it is shown as written, not as rich markup
        if model.problem:
            table.add_row(Text(model.name), "-", "-", Text(model.problem))
        else:
            table.add_row(Text(model.name), f"{model.params:,}", f"{model.flops / 1e9:.4f}", "")
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120).print(table)
