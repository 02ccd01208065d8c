"""`visionbench eval RUN_DIR [--split test] [--tta none|flip] [--weights best|last]`."""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench import layout


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    split: str = typer.Option("test", help="train, val or test."),
    tta: str = typer.Option("none", help="Test-time augmentation: none or flip."),
    weights: str = typer.Option("best", help=f"best ({layout.BEST}) or last ({layout.LAST})."),
) -> None:
    """Evaluate a run's weights on a whole split (also when the run itself tested on `data.test_subset`); prints
    the metrics and saves them as eval-<split>-<tta>-<weights>.json in the run directory."""
    from visionbench.engine.inference import evaluate_run

    result, path = evaluate_run(run_dir, split, tta, weights)
    for key, value in result.items():
        print(f"{key}\t{'undefined' if value is None else value}")
    print(f"wrote {path}")
