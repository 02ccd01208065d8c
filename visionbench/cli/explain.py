"""`visionbench explain RUN_DIR --method M [--n 16] [--split test] [--classes a,b] [--target predicted|true]`."""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench import layout
from visionbench.analysis.attribution import ATTRIBUTIONS
from visionbench.errors import UserError


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
    from visionbench.analysis.attribution import check_method
    from visionbench.analysis.explain import explain_groups, save_grids, select, wanted_classes
    from visionbench.engine.inference import check_split, display_images, load_run, split_images, split_outputs

    if target not in ("predicted", "true"):
        raise UserError(f"--target: expected predicted or true, got {target!r}")
    check_split(split)
    run = load_run(run_dir, weights)
    check_method(method, run.model, run.cfg.model.name)
    wanted = wanted_classes(classes, run.info.class_names)  # before any data is read
    images, targets = split_images(run, split, scan)
    _, outputs = split_outputs(run, images, f"{run_dir}: {split}")
    groups = select(run.task, outputs, targets, n, wanted, target)
    maps = explain_groups(run.model, images, groups, method, batch_size)
    out_dir = run_dir / layout.EXPLAIN / f"{method}-{split}"
    title = f"{method} ({target} targets), {split}"
    paths = save_grids(out_dir, display_images(run.info, images), groups, maps, title)
    for name, panels in groups.items():
        print(f"{name}: {len(panels)} images")
    for path in paths:
        print(path)
