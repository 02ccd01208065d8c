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
    import torch

    from visionbench.analysis.attribution import check_method
    from visionbench.analysis.explain import explain_groups, save_grids, select
    from visionbench.cli.predict import check_finite_outputs, load_run, split_images

    if target not in ("predicted", "true"):
        raise UserError(f"--target: expected predicted or true, got {target!r}")
    if split not in ("train", "val", "test"):
        raise UserError(f"--split: expected train, val or test, got {split!r}")
    run = load_run(run_dir, weights)
    check_method(method, run.model, run.cfg.model.name)
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if wanted:  # before any data is read
        unknown = [c for c in wanted if c not in run.info.class_names]
        if unknown:
            raise UserError(f"--classes: no class {unknown[0]!r}; the classes are {', '.join(run.info.class_names)}")
    images, targets = split_images(run, split, scan)
    with torch.inference_mode():
        preds = torch.cat([run.model(images[i : i + 256]) for i in range(0, len(images), 256)]).float()
        if run.kind == "regression":
            preds = run.task.activate(preds)  # in target units, as the captions show them
    check_finite_outputs(preds, [f"{run_dir}: {split} image {i}" for i in range(len(preds))])
    groups = select(run.kind, preds, targets, run.info.class_names, n, wanted, target)
    maps = explain_groups(run.model, images, groups, method, batch_size)
    mean = torch.tensor(run.info.mean or (0.0,))[:, None, None]
    std = torch.tensor(run.info.std or (1.0,))[:, None, None]
    display = (images * std + mean).clamp(0, 1) if run.info.name != "deeplense" else images
    out_dir = run_dir / layout.EXPLAIN / f"{method}-{split}"
    paths = save_grids(out_dir, display, groups, maps, f"{method} ({target} targets), {split}")
    for name, panels in groups.items():
        print(f"{name}: {len(panels)} images")
    for path in paths:
        print(path)
