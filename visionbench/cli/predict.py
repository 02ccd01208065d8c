"""`visionbench predict RUN_DIR IMAGES... [--weights best|last] [--top-k 5] [--json]`: a trained run on image files.

Each file goes through the run's own evaluation preprocessing (`engine/inference.py` says how), so no training
data is needed. A folder among IMAGES stands for the image files directly in it (the extensions image folders are
read with, sorted by name; subfolders are not searched, and a note on stderr says so). Every file is decoded and
predicted before anything is printed, so bad input prints nothing but the error line. A run calibrated by
`visionbench eval --calibrate` has its logits divided by the temperature fitted for these weights (a note on stderr
says so, the JSON records carry it; a temperature fitted for other weights is refused with one line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from visionbench import layout
from visionbench.errors import UserError


def predict(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    images: list[Path] = typer.Argument(
        ...,
        help="Image files (PNG, JPEG, anything Pillow reads) or .npy arrays; a folder stands for the image files "
        "directly in it.",
    ),
    weights: str = typer.Option("best", help=f"best ({layout.BEST}) or last ({layout.LAST})."),
    top_k: int = typer.Option(5, "--top-k", help="Classification: the K most probable classes (all: K >= classes)."),
    json_lines: bool = typer.Option(False, "--json", help="One JSON object per image instead of a table."),
) -> None:
    """Predict with a run's weights: top-k classes, every label's probability, or regression values in target units.

    Images of any size are resized to the run's input size and normalised as in training: 8-bit images divided by
    255, 16-bit ones by 65535, float arrays taken in [0, 1].
    """
    from visionbench.engine.calibration import use_temperature
    from visionbench.engine.inference import image_files, load_run, predict_files

    if top_k < 1:
        raise UserError(f"--top-k: expected a positive integer, got {top_k}")
    files, notes = image_files(images)
    run = load_run(run_dir, weights)
    calibrated = use_temperature(run, run_dir, weights)  # after `eval --calibrate`; refused for other weights
    records = predict_files(run, files, top_k)
    if json_lines:
        lines = [json.dumps(record, allow_nan=False) for record in records]  # strict JSON, never NaN or Infinity
        print("\n".join(lines))
    else:
        _print_table(records, run.task)
    for note in notes + ([calibrated] if calibrated else []):  # after the answer: bad input stays one line
        print(f"note: {note}", file=sys.stderr)


def _print_table(records: list[dict[str, Any]], task) -> None:
    """One row per prediction, in the task's columns; the image named on its first row."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("image", *task.columns)
    for record in records:  # file and class names are data, not rich markup: "[red]" is printed as it is
        for k, prediction in enumerate(record["predictions"]):
            cells = [record["image"] if k == 0 else "", *task.cells(k, prediction)]
            table.add_row(*(Text(cell) for cell in cells))
    if "threshold" in records[0]:
        table.caption = f"positive: probability > {records[0]['threshold']:g}"
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120).print(table)
