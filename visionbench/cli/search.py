"""`visionbench search CONFIG --space SPACE.yaml [--sampler grid|random|tpe] [--trials N] [--storage URL]
[--workers K] [--study-name NAME] [--resume]`: trials drawn from a space, in one optuna study, then its report."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from visionbench.utils.interrupts import Interrupted, signal_name


def search(
    config: Path = typer.Argument(..., help="Base YAML config; each trial adds overrides drawn from the space."),
    space: Path = typer.Option(..., "--space", help="Search space YAML: params (dotted keys), constraints, pruner."),
    sampler: str | None = typer.Option(None, "--sampler", help="grid, random or tpe (default: the space's)."),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Trials for random/tpe; a grid runs its cells."),
    storage: str | None = typer.Option(
        None, "--storage", help="optuna storage URL (default: sqlite:///<study folder>/study.db; postgresql://...)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes sharing the study."),
    study_name: str | None = typer.Option(None, "--study-name", help="Default: the space file's name."),
    resume: bool = typer.Option(False, "--resume", help="Continue (or join) an existing study."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override of the base config: dotted.key=value."),
) -> int:
    """Search hyperparameters and architectures under constraints; trials share one optuna study."""
    import optuna

    from visionbench.errors import UserError
    from visionbench.search.results import counts_line, write_search_report
    from visionbench.search.space import SAMPLERS, SCALING_PARAM
    from visionbench.search.spec import prepare
    from visionbench.search.study import open_storage, open_study, redact, unfinished
    from visionbench.search.workers import run_search

    if sampler is not None and sampler not in SAMPLERS:
        raise UserError(f"--sampler {sampler!r}: expected {', '.join(SAMPLERS[:-1])} or {SAMPLERS[-1]}")
    spec = prepare(config, space, set_ or [], sampler, trials, storage, study_name)
    storage_obj = open_storage(spec)
    study = open_study(spec, storage_obj, resume)
    what = f"{len(spec.cells)} grid cells" if spec.sampler == "grid" else f"{spec.trials} {spec.sampler} trials"
    print(f"study {spec.study_name!r}: {what}, {workers} worker(s), optimising {spec.metric} ({spec.direction})")
    print(f"study folder: {spec.study_dir}")
    try:
        codes = run_search(spec, workers)
    except Interrupted as e:
        again = [config, "--space", space, *(a for s in set_ or [] for a in ("--set", s))]
        shown_storage = redact(storage) if storage else None  # never print a password
        for flag, value in (("--sampler", sampler), ("--trials", trials), ("--storage", shown_storage)):
            again += [flag, value] if value is not None else []
        again += [*(["--workers", workers] if workers > 1 else []), "--study-name", spec.study_name, "--resume"]
        raise Interrupted(
            e.signum,
            f"search interrupted by {signal_name(e.signum)}; continue with: visionbench search "
            f"{shlex.join(map(str, again))} (a trial that was running resumes from its checkpoint once "
            f"{spec.space.grace_seconds} s have passed without its heartbeat)",
        ) from None

    study = optuna.load_study(study_name=spec.study_name, storage=storage_obj)
    print(counts_line(study))
    keys = [k for k in spec.space.params if k != SCALING_PARAM]
    if spec.variants:
        keys = ["model.kwargs.blocks", "model.kwargs.channels", *keys]
    paths = write_search_report(study, spec.metric, spec.study_dir, keys)
    if paths:
        print(f"report: {paths[0]}\nreport: {paths[1]}")
    try:
        best = study.best_trial
        sets = " ".join(best.user_attrs.get("overrides", []))
        print(f"best: trial {best.number} {spec.metric} {best.value:.4f}: {sets}")
    except ValueError:
        print("no trial completed")
    if any(code not in (0, None) and code > 0 for code in codes) or unfinished(study):
        return 1
    return 0
