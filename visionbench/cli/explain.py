"""`visionbench explain RUN_DIR --method M [--n 16] [--split test] [--classes a,b] [--target predicted|true]`."""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench.analysis.attribution import ATTRIBUTIONS


def explain(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    method: str = typer.Option(..., "--method", help=", ".join(ATTRIBUTIONS.list())),
    n: int = typer.Option(16, "--n", min=1, help="Images per group (correct, wrong, or each class)."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    classes: str | None = typer.Option(None, "--classes", help="Comma-separated class names: one grid per class."),
    target: str = typer.Option("predicted", "--target", help="Attribute the predicted or the true class."),
    weights: str = typer.Option("best", "--weights", help="best or last."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images attributed at a time (memory)."),
    scan: int = typer.Option(2000, "--scan", min=1, help="Images of the split searched for the groups."),
) -> None:
    """Attribution maps over image grids (correct and wrong predictions, or per class), saved as PNG in the run."""
    from visionbench.analysis.explain import explain_run

    groups, paths = explain_run(run_dir, method, n, split, classes, target, weights, batch_size, scan)
    for name, panels in groups.items():
        print(f"{name}: {len(panels)} images")
    for path in paths:
        print(path)
