"""`visionbench compare CONFIG [--set key=value ...] [--jobs N] [--rerun-changed]`: every cell of the config's
matrix, then the report."""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench.utils.interrupts import Interrupted


def compare(
    config: Path = typer.Argument(..., help="YAML config with a `matrix:` of dotted keys to lists of values."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override of every cell: dotted.key=value."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="Cells at a time (default: one per CUDA device)."),
    rerun_changed: bool = typer.Option(
        False,
        "--rerun-changed",
        help="Train again, from scratch, the cells that ran before with another config (their run directories "
        "are replaced); without it such cells are refused.",
    ),
) -> int:
    """Run every cell of a matrix (finished cells are skipped, interrupted ones resume), then write the report."""
    from visionbench.engine.compare import (
        default_jobs,
        failures,
        interrupted,
        mark_stale,
        read_matrix,
        run_cells,
        stale_cells,
    )

    cells, keys = read_matrix(config, set_ or [])
    experiment = cells[0].run_dir.parent
    mark_stale(stale_cells(cells), rerun_changed)
    print(f"{len(cells)} cells ({' x '.join(keys)}) in {experiment}")
    from visionbench.report import write_report
    from visionbench.report.plots import plot_run
    from visionbench.report.tables import matrix_axes

    try:
        outcomes = run_cells(cells, jobs or default_jobs(), after=plot_run)
    except Interrupted as e:
        again = [config, *(a for s in set_ or [] for a in ("--set", s))]
        again += [*(["--jobs", str(jobs)] if jobs else []), *(["--rerun-changed"] if rerun_changed else [])]
        raise interrupted("compare", e.signum, cells, again) from None
    rows, cols = matrix_axes(keys)
    md, html = write_report([experiment], experiment, rows=rows, cols=cols)
    print(f"report: {md}\nreport: {html}")
    return failures(outcomes)
