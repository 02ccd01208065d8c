"""`visionbench study FILE [--short] [--jobs N] [--set key=value ...] [--out DIR] [--rerun-changed]`: every cell of
a study file, then its README.md and report.html."""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench.utils.interrupts import Interrupted


def study(
    file: Path = typer.Argument(..., help="Study file (YAML): its cells, tables and figures."),
    short: bool = typer.Option(
        False, "--short", help="Every cell's short variant (seconds on a CPU), written beside the study's folder."
    ),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="Runs at a time (default: one per CUDA device)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override of every cell: dotted.key=value."),
    out: Path | None = typer.Option(None, "--out", help="The study's folder [default: runs/studies/<file stem>]."),
    rerun_changed: bool = typer.Option(
        False,
        "--rerun-changed",
        help="Train again, from scratch, the runs that ran before with another config (their run directories "
        "are replaced); without it such runs are refused.",
    ),
) -> int:
    """Run every cell of a study (finished runs are skipped, interrupted ones resume), then write its README."""
    from visionbench.engine.compare import Cell, default_jobs, failures, interrupted, mark_stale, run_cells, stale_cells
    from visionbench.study import read_study

    spec = read_study(file, short=short, overrides=set_ or [], out=out)
    cells = [
        Cell(
            list(run.overrides),
            run.cfg,
            run.run_dir,
            title=cell.title + (f", seed={run.seed}" if run.seed is not None else ""),
        )
        for cell, run in spec.runs
    ]
    mark_stale(stale_cells(cells), rerun_changed)
    print(f"{len(spec.cells)} cells, {len(cells)} runs in {spec.out}")
    from visionbench.report.study import write_study

    try:
        outcomes = run_cells(cells, jobs or default_jobs())
    except Interrupted as e:
        again = [file, *(["--short"] if short else []), *(a for s in set_ or [] for a in ("--set", s))]
        again += [*(["--out", str(out)] if out else []), *(["--jobs", str(jobs)] if jobs else [])]
        raise interrupted("study", e.signum, cells, again + (["--rerun-changed"] if rerun_changed else [])) from None
    md, html = write_study(spec)
    print(f"study: {md}\nstudy: {html}")
    return failures(outcomes)
