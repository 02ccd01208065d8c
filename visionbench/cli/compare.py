"""`visionbench compare CONFIG [--set key=value ...] [--jobs N] [--rerun-changed]`: every cell of the config's
matrix, then the report."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from visionbench.errors import UserError
from visionbench.utils.interrupts import Interrupted, signal_name


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
    from visionbench.engine.compare import cell_state, default_jobs, read_matrix, run_cells, stale_cells

    cells, keys = read_matrix(config, set_ or [])
    experiment = cells[0].run_dir.parent
    _mark_stale(stale_cells(cells), rerun_changed)
    print(f"{len(cells)} cells ({' x '.join(keys)}) in {experiment}")
    from visionbench.report import write_report
    from visionbench.report.plots import plot_run
    from visionbench.report.tables import matrix_axes

    try:
        outcomes = run_cells(cells, jobs or default_jobs(), after=plot_run)
    except Interrupted as e:
        again = [config, *(a for s in set_ or [] for a in ("--set", s))]
        again += [*(["--jobs", str(jobs)] if jobs else []), *(["--rerun-changed"] if rerun_changed else [])]
        raise _interrupted(e.signum, [cell_state(c) for c in cells], again) from None
    failed = [o for o in outcomes if o.status == "failed"]
    rows, cols = matrix_axes(keys)
    md, html = write_report([experiment], experiment, rows=rows, cols=cols)
    print(f"report: {md}\nreport: {html}")
    if failed:
        print(f"{len(failed)} of {len(cells)} cells failed:")
        for o in failed:
            print(f"  {o.cell.label}: {o.error}")
        return 1
    return 0


def _mark_stale(stale: list, rerun_changed: bool) -> None:
    """Refuse cells that ran before with another config, or mark them to be trained again with --rerun-changed."""
    if stale and not rerun_changed:
        cell, differ = stale[0]
        more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
        raise UserError(
            f"{cell.run_dir}: ran before with another config ({', '.join(differ)} differ){more}; its results are "
            "not this config's: train such cells again with --rerun-changed (their run directories are replaced), "
            "or set another trainer.experiment"
        )
    for cell, differ in stale:
        cell.changed = tuple(differ)


def _interrupted(signum: int, states: list[str], again: list) -> Interrupted:
    """The interrupt's line: what is done, what resumes, and the command that continues."""
    return Interrupted(
        signum,
        f"compare interrupted by {signal_name(signum)}: {states.count('finished')} of {len(states)} cells "
        f"finished, {states.count('resumable')} resume from a checkpoint; continue with: visionbench compare "
        + shlex.join(map(str, again)),
    )
