"""`visionbench eval RUN_DIR [--split test] [--tta none|flip] [--weights best|last] [--calibrate]`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from visionbench import layout


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    split: str = typer.Option("test", help="train, val or test."),
    tta: str = typer.Option("none", help="Test-time augmentation: none or flip."),
    weights: str = typer.Option("best", help=f"best ({layout.BEST}) or last ({layout.LAST})."),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Fit a temperature on the val split (never on test), print ECE, Brier score and NLL on --split before "
        f"and after, and save it as {layout.temperature('<weights>')} for predict and export.",
    ),
) -> None:
    """Evaluate a run's weights on a whole split (also when the run itself tested on `data.test_subset`); prints
    the metrics and saves them as eval-<split>-<tta>-<weights>.json in the run directory."""
    from visionbench.engine.inference import evaluate_run

    result, path = evaluate_run(run_dir, split, tta, weights, calibrate)
    for key, value in _lines(result):
        print(f"{key}\t{'undefined' if value is None else value}")
    if calibrate and result["calibration"]["in_sample"]:
        print("note: the temperature was fitted on this very split: its scores after are in-sample")
    print(f"wrote {path}")


def _lines(result: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The result's values, a nested one (calibration.before.ece) under its dotted key."""
    lines = []
    for key, value in result.items():
        if isinstance(value, dict):
            lines += _lines(value, f"{prefix}{key}.")
        else:
            lines.append((f"{prefix}{key}", value))
    return lines
