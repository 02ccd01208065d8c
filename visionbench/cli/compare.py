"""`visionbench compare CONFIG [--set key=value ...] [--jobs N]`: every cell of the config's matrix, then the report."""

from __future__ import annotations

from pathlib import Path

import typer


def compare(
    config: Path = typer.Argument(..., help="YAML config with a `matrix:` of dotted keys to lists of values."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override of every cell: dotted.key=value."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="Cells at a time (default: one per CUDA device)."),
) -> int:
    """Run every cell of a matrix (finished cells are skipped, interrupted ones resume), then write the report."""
    from visionbench.engine.compare import default_jobs, read_matrix, run_cells

    cells, keys = read_matrix(config, set_ or [])
    experiment = cells[0].run_dir.parent
    print(f"{len(cells)} cells ({' x '.join(keys)}) in {experiment}")
    from visionbench.report import write_report
    from visionbench.report.plots import plot_run
    from visionbench.report.tables import POOLED_KEYS

    outcomes = run_cells(cells, jobs or default_jobs(), after=plot_run)
    failed = [o for o in outcomes if o.status == "failed"]

    # a seed (any of the report's pooled keys) is no axis: the runs that differ only in it share a cell, mean ± std
    measured = [k for k in keys if k not in POOLED_KEYS]
    rows, cols = (measured[0] if measured else None), (",".join(measured[1:]) or None)
    md, html = write_report([experiment], experiment, rows=rows, cols=cols)
    print(f"report: {md}\nreport: {html}")
    if failed:
        print(f"{len(failed)} of {len(cells)} cells failed:")
        for o in failed:
            print(f"  {o.cell.label}: {o.error}")
        return 1
    return 0
