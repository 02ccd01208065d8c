"""A study's results: counts, the best trials, parameter importances and the optimisation history (optuna's
matplotlib figures), as report sections above the trials' own run table in the study folder's report.md/.html.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from visionbench import layout
from visionbench.errors import first_line
from visionbench.report import Section, write_report
from visionbench.report.plots import _pyplot, _save
from visionbench.report.tables import Cell, Table

BEST_ROWS = 10


def outcome_counts(study) -> Counter:
    """complete, pruned by the constraints / the config / the model builder / the pruner, failed, retried, running."""
    from optuna.trial import TrialState

    counts: Counter = Counter()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.PRUNED:
            counts[f"pruned ({t.user_attrs.get('pruned_by', 'pruner')})"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed" if "error" in t.user_attrs else "failed (worker died, retried)"] += 1
        else:
            counts[t.state.name.lower()] += 1
    return counts


def counts_line(study) -> str:
    counts = outcome_counts(study)
    total = sum(counts.values())
    return f"{total} trials: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def best_trials(study, n: int = BEST_ROWS) -> list:
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return sorted(done, key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)[:n]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_table(study, metric: str) -> Table:
    trials = best_trials(study)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    test_key = "test/" + metric.removeprefix("val/")
    rows = []
    for t in trials:
        test = t.user_attrs.get(test_key)
        params = t.user_attrs.get("params")
        run = Path(t.user_attrs.get("run_dir", "")).name
        rows.append(
            [
                Cell(str(t.number), sort=t.number),
                Cell(f"{t.value:.4f}", sort=t.value),
                Cell(f"{test:.4f}" if test is not None else "–", sort=test),
                Cell(f"{params:,}" if params is not None else "–", sort=params),
                *(Cell(_fmt(t.params.get(k, "–"))) for k in keys),
                Cell(run),
            ]
        )
    return Table(
        title="",
        header=["trial", metric, test_key, "params", *keys, "run"],
        numeric=[True, True, True, True, *([False] * len(keys)), False],
        rows=rows,
        notes=[f"Best {len(rows)} complete trials by {metric} (selection on validation; test shown, not used)."],
    )


def pruned_table(study) -> Table:
    """Trials stopped before or during training, with the reason."""
    from optuna.trial import TrialState

    rows = [
        [Cell(str(t.number), sort=t.number), Cell(t.user_attrs.get("pruned_by", "pruner")), Cell(_reason(t))]
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED, TrialState.FAIL))
    ]
    return Table(title="", header=["trial", "by", "reason"], numeric=[True, False, False], rows=rows)


def _reason(t) -> str:
    from optuna.trial import TrialState

    if t.state == TrialState.FAIL:
        return t.user_attrs.get("error", "its worker stopped beating (killed); retried")
    return str(t.user_attrs.get("reason", ""))


def importances(study) -> tuple[dict[str, float], str | None]:
    """optuna's parameter importances (fANOVA) over the complete trials, or an empty dict and why."""
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study), None
    except (ValueError, RuntimeError) as e:
        return {}, first_line(e)


def _figure(plot, study, path: Path, **kwargs) -> Path | None:
    """One of optuna.visualization.matplotlib's figures, saved as PNG and SVG; None when optuna cannot draw it."""
    _pyplot()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's matplotlib backend is experimental: it warns on each call
            ax = plot(study, **kwargs)
    except (ValueError, RuntimeError):
        return None
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(6.5, 4)
    return _save(fig, path)


def search_sections(study, metric: str, out_dir: Path) -> list[Section]:
    import optuna.visualization.matplotlib as vis

    plots = out_dir / layout.PLOTS
    plots.mkdir(parents=True, exist_ok=True)
    sections = [
        Section("Search", paragraphs=[f"Study {study.study_name!r}, {counts_line(study)}."] + _best_line(study))
    ]
    sections.append(Section("Best trials", tables=[best_table(study, metric)]))
    values, why = importances(study)
    table = Table(
        title="",
        header=["parameter", "importance"],
        numeric=[False, True],
        rows=[[Cell(k), Cell(f"{v:.3f}", sort=v)] for k, v in values.items()],
        notes=["fANOVA importances (optuna's default evaluator) over the complete trials; they sum to 1."],
    )
    figure = _figure(vis.plot_param_importances, study, plots / "param_importances.png") if values else None
    sections.append(
        Section(
            "Parameter importances",
            paragraphs=[] if values else [f"Not computed: {why}."],
            tables=[table] if values else [],
            figures=[figure] if figure else [],
        )
    )
    history = _figure(vis.plot_optimization_history, study, plots / "optimization_history.png")
    sections.append(Section("Optimisation history", figures=[history] if history else []))
    pruned = pruned_table(study)
    if pruned.rows:
        sections.append(Section("Pruned and failed trials", tables=[pruned]))
    return sections


def _best_line(study) -> list[str]:
    best = best_trials(study, 1)
    if not best:
        return ["No trial completed."]
    t = best[0]
    value = t.value if t.value is not None and math.isfinite(t.value) else float("nan")
    sets = " ".join(t.user_attrs.get("overrides", []))
    return [f"Best: trial {t.number}, value {value:.4f}, {sets}."]


def write_search_report(study, metric: str, study_dir: Path, keys: list[str]) -> tuple[Path, Path] | None:
    """report.md and report.html in the study folder; None when no trial has a run directory yet."""
    from visionbench.errors import UserError
    from visionbench.report.records import find_runs

    try:
        find_runs([study_dir])
    except UserError:  # no run yet: every trial was pruned before training
        return None
    sections = search_sections(study, metric, study_dir)
    return write_report(
        [study_dir],
        study_dir,
        rows=",".join(keys) or None,
        sections=sections,
        pivots=False,
        title=f"visionbench search: {study.study_name}",
    )
