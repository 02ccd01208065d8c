"""A study's `README.md` and `report.html` (`visionbench study`, study.py): its tables and figures in the layout its
file gives, then the settings of every cell and a line per run, built from the cells' run directories alone.

README.md links its figures relative to itself (each run's under `runs/<cell>/plots/`, the curves across cells under
`figures/`), so that the study folder can be committed or moved as it is; report.html embeds them. Values are what
each run's summary.json holds: `final` is the last row of its metrics.csv (train/*, val/* and test/* columns alike),
`best` the row of its best validation epoch.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from visionbench import layout
from visionbench.errors import UserError, first_line
from visionbench.report import plots
from visionbench.report.page import FigureGrid, Section, draw_run, render_html, render_markdown
from visionbench.report.records import config_keys, config_value, load_record
from visionbench.report.tables import (
    EXTRA_HEADERS,
    Cell,
    Group,
    Table,
    ValueColumn,
    label,
    labelled_table,
    run_table,
)
from visionbench.study import (
    ANALYSIS_FIGURES,
    EXPLAIN_FIGURES,
    CurvesFigure,
    ExplainFigure,
    GridFigure,
    RunsFigure,
    Study,
    StudyCell,
    TableSpec,
    TagLogsFigure,
    curve_file,
    relative,
)
from visionbench.utils.io import write_text

NOT_STARTED = "not started"
# Keys that every cell's settings differ in without saying anything of what it measures
_UNSHOWN_SETTINGS = frozenset({"trainer.seed", "trainer.experiment", "trainer.out_dir"})


def write_study(study: Study, unexplained: dict[tuple[str, Path], str] | None = None) -> tuple[Path, Path]:
    """Draw every run's figures and the curves across cells, then write the study's README.md and report.html.
    `unexplained`: why a run has no grids of an `explain` figure's method, by (method, run directory) (a model the
    method cannot take), said in its section instead of "not yet".

    Returns:
        The paths of README.md and report.html.

    Raises:
        UserError: a table or curve names a metric that no finished run records (naming the study file's key and
            the metrics the runs have), before README.md or report.html is written.
    """
    groups = [_group(cell) for cell in study.cells]
    records = [rec for group in groups for rec in group.records]
    _check_metrics(study, records)
    drawn = [draw_run(Path(rec["run_dir"]), redraw=False) for rec in records]
    sections = [_about(study), *(_table_section(study, t, groups) for t in study.spec.tables)]
    for figure in study.spec.figures:
        sections += _figure_sections(study, figure, unexplained or {})
    sections.append(_settings(study))
    title = study.spec.title + (" (short mode)" if study.short else "")
    runs = run_table(records)
    md_path, html_path = study.out / layout.STUDY_README, study.out / layout.STUDY_HTML
    write_text(md_path, render_markdown(records, [], runs, sections, study.out, title))
    write_text(html_path, render_html(records, [], runs, drawn, sections, title))
    return md_path, html_path


def _group(cell: StudyCell) -> Group:
    """The cell's records, one per run; a run that never started (its folder absent) is one too, marked so."""
    records = [
        load_record(run.run_dir)
        if run.run_dir.is_dir()
        else {"run_dir": str(run.run_dir), "status": NOT_STARTED, "config": {}}
        for run in cell.runs
    ]
    return Group(dict(cell.labels), cell.notes, records, dict(cell.reference))


def _recorded(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[str]]:
    """The finished runs, and every metric their last and best rows hold."""
    finished = [rec for rec in records if rec.get("status") == "finished"]
    keys = {k for rec in finished for row in ("final", "best") for k in (rec.get(row) or {}) if "/" in k}
    return finished, keys


def _check_metrics(study: Study, records: list[dict[str, Any]]) -> None:
    """A metric that no finished run records is a misspelt name (or another task's metric), not a column of
    dashes. Nothing is checked before a run has finished."""
    finished, keys = _recorded(records)
    if not finished:
        return
    named = [
        (f"tables[{i}].columns[{j}].metric", c.metric)
        for i, t in enumerate(study.spec.tables)
        for j, c in enumerate(t.columns)
    ]
    named += [
        (f"figures[{i}].metrics[{j}].metric", c.metric)
        for i, f in enumerate(study.spec.figures)
        if isinstance(f, CurvesFigure)
        for j, c in enumerate(f.metrics)
    ]
    for where, metric in named:
        if metric not in keys:
            raise UserError(
                f"{study.path}: {where}: no finished run records {metric}; they record {', '.join(sorted(keys))}"
            )


def _command(study: Study) -> str:
    words = ["visionbench", "study", str(study.path), *(["--short"] if study.short else [])]
    words += [w for s in study.overrides for w in ("--set", s)]
    return shlex.join(words)


def _about(study: Study) -> Section:
    paragraphs = list(study.spec.description)
    if study.short:
        paragraphs.append(
            "Short mode: every cell ran with the study's short overrides (Settings below), to check that the study "
            "runs end to end; its numbers are not the study's results."
        )
    paragraphs.append(f"Written by: {_command(study)}")
    return Section("", paragraphs=paragraphs)


def _table_section(study: Study, spec: TableSpec, groups: list[Group]) -> Section:
    """A table of the study file, and its reference table when asked."""
    columns = [ValueColumn(c.metric, c.header or c.metric, c.format or spec.format, c.at) for c in spec.columns]
    extras = [(e.value, e.header or EXTRA_HEADERS.get(e.value, e.value)) for e in spec.extra]
    where = {c.at for c in spec.columns}
    at = " and ".join(["at the last epoch"] * ("final" in where) + ["at the best validation epoch"] * ("best" in where))
    note = (
        f"Values {at}; a cell of several runs (seeds) shows mean ± sample std and their number n, and every run that "
        "did not finish is marked. A note in parentheses follows its value, or the row's label when every cell of "
        "the row has it."
    )
    table = labelled_table("", groups, spec.rows, spec.cols, columns, extras, spec.row_header, [*spec.notes, note])
    tables = [table]
    if spec.reference:
        title = "reference: the figures the study reported, not measured by visionbench"
        tables.append(labelled_table(title, groups, spec.rows, spec.cols, columns, (), spec.row_header, (), True))
    return Section(spec.title, tables=tables)


def _figure_sections(study: Study, figure: Any, unexplained: dict[tuple[str, Path], str]) -> list[Section]:
    """The sections of one figure of the study file (one of study.py's `Figure` kinds)."""
    if isinstance(figure, GridFigure):
        return [_grid(study, figure)]
    if isinstance(figure, CurvesFigure):
        return [_curves(study, figure)]
    if isinstance(figure, TagLogsFigure):
        return _tag_logs(study, figure)
    if isinstance(figure, ExplainFigure):
        return _explained(study, figure, unexplained)
    return _run_figures(study, figure)


def _grid(study: Study, figure: GridFigure) -> Section:
    """A figure of every cell's (first) run, rows and columns by two labels."""
    images = {}
    for cell in study.cells:
        png = cell.runs[0].run_dir / layout.PLOTS / f"{figure.figure}.png"
        if png.is_file():
            images[cell.labels[figure.rows], cell.labels[figure.cols]] = png
    rows = list(dict.fromkeys(cell.labels[figure.rows] for cell in study.cells))
    cols = list(dict.fromkeys(cell.labels[figure.cols] for cell in study.cells))
    paragraphs = ["Each cell shows the run of its first seed."] if any(len(c.runs) > 1 for c in study.cells) else []
    missing = [c.title for c in study.cells if (c.labels[figure.rows], c.labels[figure.cols]) not in images]
    if missing:
        paragraphs.append(f"No {figure.figure} figure (yet) for: {'; '.join(missing)}.")
    return Section(figure.title, paragraphs=paragraphs, grids=[FigureGrid(figure.rows, rows, cols, images)])


def _line_names(study: Study, key: str | None) -> list[str]:
    """The legend entry of each run: the label `key` (every label without one), its seed when its cell has
    several, the cell's other labels where two runs would share a name."""
    names = []
    for cell, run in study.runs:
        name = cell.labels[key] if key else cell.title
        names.append(name + (f" (seed {run.seed})" if len(cell.runs) > 1 else ""))
    seen = [n for n in names if names.count(n) > 1]
    return [
        f"{n} ({cell.title})" if n in seen else n for n, (cell, _) in zip(names, study.runs, strict=True)
    ]  # fmt: skip


def _curves(study: Study, figure: CurvesFigure) -> Section:
    """One figure per metric, a line per run, under the study's figures/ (PNG, SVG and CSV)."""
    section = Section(figure.title)
    names = _line_names(study, figure.lines)
    for curve in figure.metrics:
        lines = {}
        for name, (_, run) in zip(names, study.runs, strict=True):
            epochs, values = plots.epoch_series(run.run_dir, curve.metric)
            if epochs:
                lines[name] = (epochs, values)
        if not lines:
            section.paragraphs.append(f"No run has recorded {curve.metric} yet.")
            continue
        png = study.out / layout.STUDY_FIGURES / f"{curve_file(curve)}.png"
        section.figures.append(plots.plot_lines(png, lines, curve.metric, curve.title or curve.metric))
        section.links += [(p.name, relative(p, study.out)) for p in (png.with_suffix(".svg"), png.with_suffix(".csv"))]
    return section


def _run_files(run_dir: Path, names: list[str]) -> tuple[list[Path], list[Path]]:
    """The PNG figures of a run that `names` name (`explain`: every grid explain wrote), and the files beside them
    (the SVG of each figure, the CSV of values it is drawn from)."""
    pngs, others = [], []
    for name in names:
        if name == EXPLAIN_FIGURES:
            pngs += sorted((run_dir / layout.EXPLAIN).glob("*/*.png"))
            continue
        if name == ANALYSIS_FIGURES:
            pngs += sorted((run_dir / layout.ANALYSIS).glob("*.png"))
            continue
        found = sorted((run_dir / layout.PLOTS).glob(f"{name}.*"))
        pngs += [p for p in found if p.suffix == ".png"]
        others += [p for p in found if p.suffix != ".png"]
    return pngs, others


def _run_figures(study: Study, figure: RunsFigure) -> list[Section]:
    """A section per run with the figures of it that the study names, and links to the files beside them."""
    sections = []
    for cell, run in study.runs:
        title = f"{figure.title}: {cell.title}" + (f", seed {run.seed}" if len(cell.runs) > 1 else "")
        pngs, others = _run_files(run.run_dir, figure.figures)
        links = [(p.name, relative(p, study.out)) for p in others]
        where = relative(run.run_dir, study.out)
        empty = [] if pngs or others else [f"No {', '.join(figure.figures)} figure (yet) in {where}."]
        sections.append(Section(title, paragraphs=empty, figures=pngs, links=links))
    return sections


def _explained(study: Study, figure: ExplainFigure, unexplained: dict[tuple[str, Path], str]) -> list[Section]:
    """A section per run with its grids of `figure.method` on `figure.split` (cli/study.py has them drawn), or why
    it has none."""
    sections = []
    for cell, run in study.runs:
        title = f"{figure.title}: {cell.title}" + (f", seed {run.seed}" if len(cell.runs) > 1 else "")
        pngs = sorted((run.run_dir / layout.explain_folder(figure.method, figure.split)).glob("*.png"))
        why = unexplained.get((figure.method, run.run_dir))
        none = f"No {figure.method} grids of {figure.split}" + (
            f": {why}" if why else f" (yet) in {relative(run.run_dir, study.out)}."
        )
        empty = [] if pngs else [none]
        sections.append(Section(title, paragraphs=empty, figures=pngs))
    return sections


def _tag_logs(study: Study, figure: TagLogsFigure) -> list[Section]:
    """Each run's metrics as per-tag CSV logs (TensorBoard's export layout) and SVG curves in its
    plots/tag_logs/ (report/tag_logs.py), a section per run with the curves and links to the logs."""
    from visionbench.report.tag_logs import write_tag_logs

    tags = [curve.metric for curve in figure.metrics]
    names = {curve.metric: curve_file(curve) for curve in figure.metrics}
    sections = []
    for cell, run in study.runs:
        title = f"{figure.title}: {cell.title}" + (f", seed {run.seed}" if len(cell.runs) > 1 else "")
        if not (run.run_dir / layout.METRICS).is_file():
            sections.append(Section(title, paragraphs=[f"No epoch recorded yet in {run.run_dir}."]))
            continue
        try:
            paths = write_tag_logs(
                run.run_dir, run.run_dir / layout.PLOTS / layout.TAG_LOGS, tags, names, figure.run_name
            )
        except UserError as e:  # a run that has not reached every metric yet, or predates the wall_time column
            sections.append(Section(title, paragraphs=[f"No tag logs: {first_line(e)}"]))
            continue
        svgs = [p for p in paths if p.suffix == ".svg"]
        logs = [(p.name, relative(p, study.out)) for p in paths if p.suffix == ".csv"]
        sections.append(Section(title, figures=svgs, links=logs))
    return sections


def _settings(study: Study) -> Section:
    """Per cell: its labels, its config file, the settings the study file lists (or every setting that differs
    between cells), its seeds and the overrides on top of the config."""
    configs = [{"config": cell.runs[0].cfg.model_dump(mode="python")} for cell in study.cells]
    if study.spec.settings is not None:
        shown = [(s.key, s.header or s.key) for s in study.spec.settings]
    else:
        differ = [k for k in config_keys(configs) if len({label(config_value(c, k)) for c in configs}) > 1]
        shown = [(k, k) for k in differ if k not in _UNSHOWN_SETTINGS]
    header = [*study.label_keys, "config", *(h for _, h in shown), "seeds", "overrides"]
    rows = []
    for cell, cfg in zip(study.cells, configs, strict=True):
        seeds = ", ".join(str(run.seed) for run in cell.runs) if cell.runs[0].seed is not None else "the config's"
        rows.append(
            [
                *(Cell(cell.labels[k]) for k in study.label_keys),
                Cell(os.path.normpath(cell.config)),
                *(Cell(label(config_value(cfg, k))) for k, _ in shown),
                Cell(seeds),
                Cell(" ".join(cell.overrides) or "–"),
            ]
        )
    table = Table("", header, [False] * len(header), rows)
    notes = ["Settings of the runs as they ran: each cell's config file with the overrides applied."]
    notes += [f"Overrides of every cell: {' '.join(study.common)}"] if study.common else []
    notes += [f"Overrides of the command (--set), after the others: {' '.join(study.overrides)}"] * bool(
        study.overrides
    )
    return Section("Settings", paragraphs=notes, tables=[table])
