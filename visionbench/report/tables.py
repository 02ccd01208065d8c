"""Results tables from run records (records.py): a pivot shaped like a paper's results table (rows architectures,
columns dataset variants, each cell the test metric as mean ± sample std over the runs in it) and one line per run.

Tables are data (`Table` of `Cell`s), rendered as markdown here and as HTML in `page.py`, so both show the same cells.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visionbench import layout
from visionbench.report.records import MISSING, UNREADABLE, config_keys, config_value, is_readable
from visionbench.utils.names import storable

DEFAULT_ROWS = ("model.name",)
# Keys that do not change what a run measures: the seeds (their spread is a cell's ±) and where output goes.
POOLED_KEYS = frozenset(
    {
        "trainer.seed",
        "data.split_seed",
        "data.root",
        "data.download",
        "trainer.out_dir",
        "trainer.experiment",
        "trainer.progress",
        "trainer.num_threads",
        "trainer.checkpoint_every_minutes",
        "trainer.checkpoint_every_steps",
    }
)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One table cell: its text, the number a click on the column header sorts by, an optional link (HTML only)."""

    text: str
    sort: float | None = None
    href: str | None = None


@dataclasses.dataclass
class Table:
    """A table apart from its rendering; `numeric[j]` right-aligns column j and sorts it by `Cell.sort`."""

    title: str
    header: list[str]
    numeric: list[bool]
    rows: list[list[Cell]]
    notes: list[str] = dataclasses.field(default_factory=list)


# --- cells ---------------------------------------------------------------------------------------------------------


def differing_keys(records: list[dict[str, Any]]) -> list[str]:
    """The config keys whose value is not the same in every record with a config (a missing key counts as a
    value); a record without a readable config.yaml would make every key differ."""
    records = [r for r in records if r.get("config")]
    return [k for k in config_keys(records) if len({label(config_value(r, k)) for r in records}) > 1]


def default_columns(records: list[dict[str, Any]], row_keys: list[str]) -> list[str]:
    """The dataset variants: `data.name` when it differs, then each `data.*` key that differs between runs of one
    dataset (a key that changes only with the dataset, such as its kwargs, would repeat `data.name`); `data.name`
    alone when nothing differs (`model.name` when the rows already are datasets)."""
    keys = [k for k in differing_keys(records) if k.startswith("data.") and k not in POOLED_KEYS]
    keys = [k for k in keys if k not in row_keys]
    datasets: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if rec.get("config"):
            datasets.setdefault(label(config_value(rec, "data.name")), []).append(rec)
    variants = [
        k
        for k in keys
        if k != "data.name" and any(len({label(config_value(r, k)) for r in runs}) > 1 for runs in datasets.values())
    ]
    columns = (["data.name"] if "data.name" in keys else []) + variants
    if columns:
        return columns
    return ["data.name"] if "data.name" not in row_keys else ["model.name"]


def matrix_axes(keys: list[str]) -> tuple[str | None, str | None]:
    """`rows` and `cols` of the report of a matrix over `keys`: the first key's values are the rows, the others'
    the columns; a seed (any pooled key) is no axis: the runs that differ only in it share a cell, mean ± std."""
    measured = [k for k in keys if k not in POOLED_KEYS]
    return (measured[0] if measured else None), (",".join(measured[1:]) or None)


def latest_per_cell(
    records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any] | None = None
) -> list[dict[str, Any]]:
    """Keep the newest run (by directory name, which starts with its timestamp) of each cell; a cell is
    (model, dataset) unless `key` says otherwise."""
    key = key or (lambda rec: (label(config_value(rec, "model.name")), label(config_value(rec, "data.name"))))
    newest: dict[Any, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: Path(r["run_dir"]).name):
        newest[key(rec)] = rec
    kept = {id(rec) for rec in newest.values()}
    return [rec for rec in records if id(rec) in kept]


# --- formatting ---------------------------------------------------------------------------------------------------


def label(value: Any) -> str:
    """A config value as a table label: YAML's spelling of scalars, JSON's of lists and mappings, `–` for none."""
    if value is MISSING:
        return "–"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _label_order(value: Any) -> tuple:
    """Numbers in numeric order, then text, then missing."""
    if value is MISSING:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, label(value))


def number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def is_percent(metric: str) -> bool:
    return metric.startswith("acc")


def _fmt(value: Any, metric: str) -> str:
    if number(value) is None:
        return "–"
    return f"{100 * value:.2f} %" if is_percent(metric) else f"{value:.4f}"


def _fmt_mean_std(values: list[float], metric: str) -> str:
    """One value as it is; several as mean ± sample std (n-1 in the denominator) with their count."""
    if len(values) == 1:
        return _fmt(values[0], metric)
    mean, std = statistics.mean(values), statistics.stdev(values)
    scale, unit, digits = (100, " %", 2) if is_percent(metric) else (1, "", 4)
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}{unit} (n={len(values)})"


def fmt_seconds(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _range(values: list[float], fmt: Callable[[float], str]) -> Cell:
    """One value, or `min–max` when the values differ; sorted by the smallest."""
    if not values:
        return Cell("–")
    lo, hi = fmt(min(values)), fmt(max(values))
    lo_number, _, lo_unit = lo.rpartition(" ")
    if lo == hi:
        text = lo
    elif lo_number and lo_unit == hi.rpartition(" ")[2]:  # one unit: `30–50 s`
        text = f"{lo_number}–{hi}"
    else:
        text = f"{lo}–{hi}"
    return Cell(text, sort=min(values))


def _error_line(text: Any, limit: int) -> str:
    lines = str(text or "").strip().splitlines()
    line = lines[0] if lines else "no error message"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def status_text(record: dict[str, Any], limit: int = 120) -> str:
    """`finished`, `running 3/10`, `failed: <first line of the error>` or `unreadable: <reason>`."""
    status = record.get("status", "unknown")
    if status == "running":
        return f"running {record.get('epochs_completed', 0)}/{record.get('epochs', '?')}"
    if status in ("failed", UNREADABLE):
        return f"{status}: {_error_line(record.get('error'), limit)}"
    return str(status)


def final_value(record: dict[str, Any], metric: str) -> float | None:
    """The final model's test value of `metric` (None when the run has none, or a value that is not finite)."""
    return number((record.get("final") or {}).get(f"test/{metric}"))


# --- tables -------------------------------------------------------------------------------------------------------


def _key_label(record: dict[str, Any], keys: list[str]) -> tuple[str, tuple]:
    """The row or column label of a record and its sort order; several keys give `key=value, ...` (last part)."""
    values = [config_value(record, k) for k in keys]
    if len(keys) == 1:
        text = label(values[0])
    else:
        text = ", ".join(f"{k.rsplit('.', 1)[-1]}={label(v)}" for k, v in zip(keys, values, strict=True))
    return text, tuple(_label_order(v) for v in values)


def cell_key(record: dict[str, Any], row_keys: list[str], col_keys: list[str]) -> tuple[str, str]:
    """The (row label, column label) of the pivot cell a record falls in."""
    return _key_label(record, row_keys)[0], _key_label(record, col_keys)[0]


def runs_cell(
    records: list[dict[str, Any]],
    value_of: Callable[[dict[str, Any]], float | None],
    fmt: Callable[[list[float]], str],
    what: str,
) -> Cell:
    """A value over the finished runs of a table cell (`fmt` of their values: one, or mean ± std), then a mark for
    every other run in it (`finished, no <what>`, `running 3/10`, `failed: ...`), so that no run is left out
    unseen; sorted by the mean."""
    values, marks = [], []
    for rec in records:
        value = value_of(rec) if rec.get("status") == "finished" else None
        if value is not None:
            values.append(value)
        elif rec.get("status") == "finished":
            marks.append(f"finished, no {what}")
        else:
            marks.append(status_text(rec, limit=60))
    parts = ([fmt(values)] if values else []) + marks
    return Cell("; ".join(parts) or "–", sort=statistics.mean(values) if values else None)


def _pivot_cell(records: list[dict[str, Any]], metric: str) -> Cell:
    """The metric over the finished runs of a cell, then a mark for every other run in it."""
    return runs_cell(
        records, lambda rec: final_value(rec, metric), lambda v: _fmt_mean_std(v, metric), f"test/{metric}"
    )


def metric_groups(records: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """Records by main metric; unreadable ones (metric unknown) join the only group when there is just one."""
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(rec.get("main_metric", "acc1") if is_readable(rec) else None, []).append(rec)
    known = sorted(k for k in groups if k is not None)
    if len(known) == 1 and None in groups:
        groups[known[0]] += groups.pop(None)
    return {k: groups[k] for k in [*known, *([None] if None in groups else [])]}


def pivot_tables(records: list[dict[str, Any]], row_keys: list[str], col_keys: list[str]) -> list[Table]:
    """One pivot per main metric: a row per value of `row_keys`, a column per value of `col_keys`, then the row's
    params, epochs and wall-clock time per finished run (ranges where they differ)."""
    return [pivot_table(group, metric, row_keys, col_keys) for metric, group in metric_groups(records).items()]


def pivot_cells(
    group: list[dict[str, Any]], row_keys: list[str], col_keys: list[str]
) -> tuple[list[str], list[str], dict[tuple[str, str], list[dict[str, Any]]]]:
    """The pivot's row labels and column labels in table order, and the records of each (row, column) cell."""
    rows: dict[str, tuple] = {}
    cols: dict[str, tuple] = {}
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in group:
        (row, row_order), (col, col_order) = _key_label(rec, row_keys), _key_label(rec, col_keys)
        rows[row], cols[col] = row_order, col_order
        cells.setdefault((row, col), []).append(rec)
    return sorted(rows, key=lambda r: (rows[r], r)), sorted(cols, key=lambda c: (cols[c], c)), cells


def pivot_table(group: list[dict[str, Any]], metric: str | None, row_keys: list[str], col_keys: list[str]) -> Table:
    """The pivot of one main metric's records (`metric_groups`)."""
    row_labels, col_labels, cells = pivot_cells(group, row_keys, col_keys)
    shape = f"{', '.join(row_keys)} × {', '.join(col_keys)}"
    what = (
        f"test/{metric}" + (" (%)" if is_percent(metric) else "")
        if metric
        else f"runs without a readable {layout.SUMMARY}"
    )
    return Table(
        title=f"{what}: {shape}",
        header=[", ".join(row_keys), *col_labels, "params", "epochs", "time/run"],
        numeric=[False, *([True] * len(col_labels)), True, True, True],
        rows=[_pivot_row(row, col_labels, cells, metric or "") for row in row_labels],
        notes=_pivot_notes(group, metric, row_keys, col_keys, cells),
    )


def _pivot_row(
    row: str, col_labels: list[str], cells: dict[tuple[str, str], list[dict[str, Any]]], metric: str
) -> list[Cell]:
    """The row's label, its cells, then its params, epochs and time per finished run."""
    in_row = [rec for col in col_labels for rec in cells.get((row, col), [])]
    return [
        Cell(row),
        *(_pivot_cell(cells[row, col], metric) if (row, col) in cells else Cell("–") for col in col_labels),
        *(extra_cell(in_row, extra) for extra in ("params", "epochs", "time")),
    ]


def _fmt_int(value: float) -> str:
    return f"{int(value):,}"


EXTRA_HEADERS = {
    "epochs": "epochs",
    "params": "params",
    "flops": "FLOPs",
    "time": "time/run",
    "image_size": "image size",
}


def _image_size(rec: dict[str, Any]) -> str | None:
    """The height and width the model took (summary's data_info.input_size): `32`, or `32x48` when not square."""
    size = (rec.get("data_info") or {}).get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) for v in size)):
        return None
    return str(size[1]) if size[1] == size[2] else f"{size[1]}x{size[2]}"


def extra_cell(records: list[dict[str, Any]], extra: str) -> Cell:
    """A row's `params`, `flops` or (planned) `epochs` over its readable runs, or `time` (wall clock) per finished
    run: one value, or the range a–b where they differ; `image_size`, the input's height (and width) each value
    once; or the value of a dotted config key (`optim.lr`), each value once, `–` where it is not set (null)."""
    readable = [rec for rec in records if is_readable(rec)]
    if "." in extra:
        values = [config_value(rec, extra) for rec in readable if rec.get("config")]
        order = {("–" if v is None else label(v)): _label_order(v) for v in values}
        return Cell(", ".join(sorted(order, key=lambda t: (order[t], t))) or "–")
    if extra == "image_size":
        sizes = {s for rec in readable if (s := _image_size(rec))}
        return Cell(", ".join(sorted(sizes, key=lambda s: (len(s), s))) or "–")
    if extra == "time":
        finished = [rec for rec in readable if rec.get("status") == "finished"]
        seconds = [number((rec.get("seconds") or {}).get("total")) for rec in finished]
        return _range([s for s in seconds if s is not None], fmt_seconds)
    return _range([v for rec in readable if (v := number(rec.get(extra))) is not None], _fmt_int)


def _pivot_notes(
    group: list[dict[str, Any]],
    metric: str | None,
    row_keys: list[str],
    col_keys: list[str],
    cells: dict[tuple[str, str], list[dict[str, Any]]],
) -> list[str]:
    notes = []
    if metric:
        better = {"max": "higher is better", "min": "lower is better"}.get(group[0].get("mode", ""), "")
        notes.append(
            f"Cells: test/{metric} of the final model"
            + (", in %" if is_percent(metric) else "")
            + (f" ({better})" if better else "")
            + "; mean ± sample std over the finished runs of a cell, with their number n; other runs are marked."
            " params, epochs and time/run (wall clock of a finished run) are the row's; a–b is a range."
        )
    # Runs pooled in one cell should differ only in their seeds; say so when they do not.
    mixed = []
    for key in differing_keys([rec for recs in cells.values() for rec in recs]):
        if key in POOLED_KEYS or key in row_keys or key in col_keys:
            continue
        if any(len({label(config_value(r, key)) for r in recs if r.get("config")}) > 1 for recs in cells.values()):
            pooled = [config_value(r, key) for recs in cells.values() for r in recs if r.get("config")]
            values = {label(v): _label_order(v) for v in pooled}
            mixed.append(f"{key} ({', '.join(sorted(values, key=lambda t: (values[t], t)))})")
    if mixed:
        notes.append(
            f"Cells pool runs that also differ in {'; '.join(mixed)}: split them with --rows/--cols (comma-separated)."
        )
    return notes


# --- tables in a study's own layout ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    """The runs of one cell of a study (its seeds), with the labels that place it in a table, its notes and the
    figures the study it reproduces reported for it (`reference`)."""

    labels: dict[str, str]
    notes: tuple[str, ...]
    records: list[dict[str, Any]]
    reference: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ValueColumn:
    """A value of each cell: a metrics.csv column (`val/map`) at the last epoch or at the best validation epoch
    (`at`), its header and Python's format spec (`.4f`, `.2%`)."""

    key: str
    header: str
    spec: str
    at: str = "final"


def run_value(record: dict[str, Any], key: str, at: str = "final") -> float | None:
    """The value of a metrics.csv column in summary.json's `final` (the last epoch's row) or `best` row."""
    return number((record.get(at) or {}).get(key))


def fmt_values(values: list[float], spec: str) -> str:
    """One value in `spec`, or several as mean ± sample std (n-1 in the denominator) with their count."""
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format(statistics.stdev(values), spec)} (n={len(values)})"


def _shared_notes(groups: list[Group]) -> list[str]:
    """The notes every cell of a row has: written once, after the row's label."""
    return [note for note in groups[0].notes if all(note in g.notes for g in groups)]


def _group_cell(group: Group | None, column: ValueColumn, lifted: list[str], reference: bool) -> Cell:
    """A cell's value (mean ± std over its seeds, the other runs marked; or its reference figure), then its notes
    that its row does not show."""
    if group is None:
        return Cell("")  # a combination the study does not fill
    if reference:
        value = number(group.reference.get(column.key))
        cell = Cell(format(value, column.spec), sort=value) if value is not None else Cell("")
    else:
        value_of = lambda rec: run_value(rec, column.key, column.at)  # noqa: E731
        cell = runs_cell(group.records, value_of, lambda values: fmt_values(values, column.spec), column.key)
    own = [note for note in group.notes if note not in lifted]
    return Cell(f"{cell.text} ({'; '.join(own)})", cell.sort) if own and cell.text else cell


def labelled_table(
    title: str,
    groups: list[Group],
    rows: str,
    cols: str | None,
    columns: list[ValueColumn],
    extras: list[tuple[str, str]] = (),
    row_header: str | None = None,
    notes: list[str] = (),
    reference: bool = False,
) -> Table:
    """A table in a study's own layout: a row per value of the label `rows`, per value of the label `cols` (if any)
    one column per value column (several metrics, splits), then the `extras` (kind, header: `extra_cell`). Rows and
    columns keep the order the cells come in; a combination no cell fills is empty. A note that every cell of a
    row has follows the row's label, the others their cell's value. `reference`: the cells' reference figures
    instead of the runs' values, and no extras.
    """
    row_labels = list(dict.fromkeys(g.labels[rows] for g in groups))
    col_labels = list(dict.fromkeys(g.labels[cols] for g in groups)) if cols else [None]
    placed = {(g.labels[rows], g.labels[cols] if cols else None): g for g in groups}
    extras = [] if reference else list(extras)
    header = [row_header or rows]
    for col in col_labels:
        header += [c.header if col is None else col if len(columns) == 1 else f"{col} {c.header}" for c in columns]
    header += [name for _, name in extras]
    body = []
    for row in row_labels:
        in_row = [g for g in groups if g.labels[rows] == row]
        lifted = _shared_notes(in_row)
        cells = [Cell(f"{row} ({'; '.join(lifted)})" if lifted else row)]
        cells += [_group_cell(placed.get((row, col)), c, lifted, reference) for col in col_labels for c in columns]
        records = [rec for g in in_row for rec in g.records]
        body.append(cells + [extra_cell(records, kind) for kind, _ in extras])
    numeric = [False] + [True] * (len(header) - 1)
    return Table(title, header, numeric, body, list(notes))


def run_table(records: list[dict[str, Any]], keys: list[str] = ()) -> Table:
    """One row per run: run, the given config keys, model, dataset, params, test metric, best validation value
    (epoch), epochs completed/planned, wall-clock time and status. `Cell.href` links to `#run-<index>`."""
    keys = [k for k in keys if k not in ("model.name", "data.name")]
    rows = []
    for i, rec in enumerate(records):
        metric = rec.get("main_metric", "acc1")
        final, best = rec.get("final") or {}, rec.get("best") or {}
        test, best_val = final_value(rec, metric), number(best.get(f"val/{metric}"))
        seconds = number((rec.get("seconds") or {}).get("total"))
        params = number(rec.get("params"))
        readable = is_readable(rec)
        rows.append(
            [
                Cell(Path(rec["run_dir"]).name, href=f"#run-{i}"),
                *(Cell(label(config_value(rec, k))) for k in keys),
                Cell(label(config_value(rec, "model.name"))),
                Cell(label(config_value(rec, "data.name"))),
                Cell(_fmt_int(params) if params is not None else "–", sort=params),
                Cell(f"{metric} {_fmt(final.get(f'test/{metric}'), metric)}" if readable else "–", sort=test),
                Cell(f"{_fmt(best_val, metric)} ({best.get('epoch')})" if best_val is not None else "–", sort=best_val),
                Cell(
                    f"{rec.get('epochs_completed', 0)}/{rec.get('epochs', '?')}" if readable else "–",
                    sort=number(rec.get("epochs_completed")),
                ),
                Cell(fmt_seconds(seconds) if seconds is not None else "–", sort=seconds),
                Cell(status_text(rec)),
            ]
        )
    return Table(
        title="runs",
        header=["run", *keys, "model", "dataset", "params", "test", "best val (epoch)", "epochs", "time", "status"],
        numeric=[False, *([False] * len(keys)), False, False, True, True, True, True, True, False],
        rows=rows,
    )


# What CommonMark and GitHub's extensions would read as markup in a line of text: `\\` escapes, code spans,
# emphasis, links and images, raw HTML and entities, table cell separators, strikethrough, GitHub's math (`$x$`) and
# a heading's closing `#`s; a run of `_` counts only outside a word (`small_cnn` stays as it is, `_x_` would be
# emphasis). Line breaks would end the table row or the paragraph.
_MD_SPECIAL = re.compile(r"_+|[\\`*\[\]<>&|~$#]|\r\n|[\r\n]")
_MD_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}  # in every renderer, even those without `\<`
_MD_BLOCK_START = re.compile(r"([-+=])|(\d{1,9})[.)]")  # a list item, a setext underline


def _md_char(match: re.Match) -> str:
    char, text = match.group(), match.string
    if char[0] == "_":
        start, end = match.start(), match.end()
        inside = start > 0 and end < len(text) and text[start - 1].isalnum() and text[end].isalnum()
        return char if inside else "\\_" * len(char)
    if char in _MD_ENTITIES:
        return _MD_ENTITIES[char]
    if char in ("\r\n", "\r", "\n"):
        return " "
    return "\\" + char


def md_text(text: Any) -> str:
    """`text` as markdown that renders as exactly this text (line breaks as spaces) in a table cell, a heading or a
    paragraph: every character that CommonMark or GitHub would read as markup is escaped, `<`, `>` and `&` as
    entities. A name is data, never markup: `<img onerror=...>` in an experiment name must not become an element."""
    return _MD_SPECIAL.sub(_md_char, storable(str(text)))


def md_paragraph(text: Any) -> str:
    """`md_text` that also cannot start a list, a heading underline or an indented code block."""
    escaped = md_text(text).lstrip(" \t")  # four spaces would start a code block
    start = _MD_BLOCK_START.match(escaped)
    if start and start.group(1):
        return "\\" + escaped
    if start:
        return f"{start.group(2)}\\{escaped[start.end(2) :]}"
    return escaped


def to_markdown(table: Table) -> str:
    """The table as GitHub markdown (numeric columns right-aligned), then its notes as paragraphs; every cell
    through `md_text`."""
    lines = [
        "| " + " | ".join(md_text(h) for h in table.header) + " |",
        "|" + "|".join("---:" if numeric else "---" for numeric in table.numeric) + "|",
        *("| " + " | ".join(md_text(c.text) for c in row) + " |" for row in table.rows),
    ]
    return "\n".join(lines) + "".join(f"\n\n{md_paragraph(note)}" for note in table.notes)


def markdown_table(records: list[dict[str, Any]], keys: list[str] = ()) -> str:
    """The per-run table as markdown."""
    return to_markdown(run_table(records, keys))
