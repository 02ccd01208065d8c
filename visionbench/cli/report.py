"""`visionbench report RUN_DIRS... | EXPERIMENT_DIR`: the results table of finished and unfinished runs."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    paths: list[Path] = typer.Argument(..., help="Run directories or experiment folders."),
    latest: bool = typer.Option(False, help="Only the newest run of each (model, dataset)."),
) -> None:
    """Print the markdown results table (model, params, test metric, time, status)."""
    from visionbench.report.tables import find_runs, latest_per_cell, load_record, markdown_table

    records = [load_record(p) for p in find_runs(paths)]
    print(markdown_table(latest_per_cell(records) if latest else records))
