"""`visionbench study FILE [--short] [--jobs N] [--set key=value ...] [--out DIR] [--rerun-changed]`: every cell of
a study file, then its README.md and report.html."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from visionbench.utils.interrupts import Interrupted

if TYPE_CHECKING:
    from visionbench.study import Study


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

    plan = read_study(file, short=short, overrides=set_ or [], out=out)
    _check_methods(plan)
    cells = [
        Cell(
            list(run.overrides),
            run.cfg,
            run.run_dir,
            title=cell.title + (f", seed={run.seed}" if run.seed is not None else ""),
        )
        for cell, run in plan.runs
    ]
    mark_stale(stale_cells(cells), rerun_changed)
    print(f"{len(plan.cells)} cells, {len(cells)} runs in {plan.out}")
    from visionbench.report.study import write_study

    try:
        outcomes = run_cells(cells, jobs or default_jobs())
    except Interrupted as e:
        again = [file, *(["--short"] if short else []), *(a for s in set_ or [] for a in ("--set", s))]
        again += [*(["--out", str(out)] if out else []), *(["--jobs", str(jobs)] if jobs else [])]
        raise interrupted("study", e.signum, cells, again + (["--rerun-changed"] if rerun_changed else [])) from None
    md, html = write_study(plan, _explain(plan))
    print(f"study: {md}\nstudy: {html}")
    return failures(outcomes)


def _check_methods(plan: Study) -> None:
    """An `explain` figure's method is a registered one, checked before anything trains."""
    from visionbench.analysis.attribution import ATTRIBUTIONS
    from visionbench.errors import UserError
    from visionbench.study import ExplainFigure

    methods = ATTRIBUTIONS.list()
    for i, figure in enumerate(plan.spec.figures):
        if isinstance(figure, ExplainFigure) and figure.method not in methods:
            raise UserError(
                f"{plan.path}: figures[{i}].method: {figure.method!r}; expected one of {', '.join(methods)}"
            )


def _explain(plan: Study) -> dict[tuple[str, Path], str]:
    """Draw each `explain` figure's grids in every finished run that has no complete set of its method and split; a run
    whose model the method cannot take is said in one line, and returned by (method, run directory) with the
    reason, which its section gives."""
    from visionbench import layout
    from visionbench.analysis.explain import explain_run
    from visionbench.engine.rundir import read_summary
    from visionbench.errors import UserError, first_line
    from visionbench.study import ExplainFigure

    unexplained: dict[tuple[str, Path], str] = {}
    for figure in (f for f in plan.spec.figures if isinstance(f, ExplainFigure)):
        for cell, run in plan.runs:
            # complete once its panels file, written last, is there: a folder an interrupt left half-drawn is redrawn
            drawn = (run.run_dir / layout.explain_folder(figure.method, figure.split) / layout.EXPLAIN_PANELS).is_file()
            if drawn or read_summary(run.run_dir).get("status") != "finished":
                continue
            try:
                explain_run(run.run_dir, figure.method, figure.n, figure.split)
                print(f"explain {figure.method}: {run.run_dir}")
            except UserError as e:
                unexplained[figure.method, run.run_dir] = first_line(e)
                print(f"explain {figure.method}: {cell.title}: {first_line(e)}")
    return unexplained
