"""Results tables from run directories: a pivot shaped like a paper's results table (rows architectures, columns
dataset variants, each cell the test metric as mean ± sample std over the runs in it) and one line per run.

A record is a run's summary.json plus its path and its config.yaml, read as a plain dict rather than validated, so
that runs written by an older visionbench still report. Unfinished and failed runs are shown with their status and
a run whose summary.json is missing or corrupt as unreadable, never dropped: a table that silently loses a diverged
seed overstates the mean.

Tables are data (`Table` of `Cell`s), rendered as markdown here and as HTML in `page.py`, so both show the same cells.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from visionbench import layout
from visionbench.config import YAMLLimitError, safe_load, yaml_problem
from visionbench.errors import UserError, first_line
from visionbench.utils.bounded import CONFIG_BYTES, UnreadableFile, read_text
from visionbench.utils.io import read_json
from visionbench.utils.names import storable

log = logging.getLogger(__name__)

UNREADABLE = "unreadable"
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
# summary.json repeats a few config values: the fallback when config.yaml is missing or unreadable.
_SUMMARY_KEYS = {"model.name": "model", "data.name": "dataset", "trainer.epochs": "epochs"}
_MISSING = object()


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


# --- records ------------------------------------------------------------------------------------------------------


# Folders that hold a run's marker without being a run: what `visionbench lr-find` writes (its config.yaml beside
# lr_find.json, lr_find.csv and lr_find.png), told by those files rather than by its `lr_find-` name, which --out
# can change; and any folder inside a run (explain/, analysis/, plots/, checkpoints/ or the user's own): runs do not
# nest. A search's study folder (report.md, study.db, plots/) holds no marker itself; its trials are runs.


def _has_marker(path: Path) -> bool:
    return any((path / marker).is_file() for marker in layout.REPORTABLE)


def _is_lr_find(path: Path) -> bool:
    return any((path / marker).is_file() for marker in layout.LR_FIND_MARKERS)


def _in_run(path: Path) -> bool:
    return _has_marker(path.resolve().parent)  # resolved: the parent of `.` is `.` itself


def _is_run(path: Path) -> bool:
    return path.is_dir() and _has_marker(path) and not _is_lr_find(path) and not _in_run(path)


def _not_a_run(path: Path) -> str | None:
    """What a folder given as a path is instead of a run: an lr-find output, or a folder inside a run."""
    if not path.is_dir():
        return None
    if _is_lr_find(path):
        return f"the output of `visionbench lr-find` ({', '.join(layout.LR_FIND_FILES[:3])}), not a training run"
    if (_has_marker(path) or path.name in layout.RUN_SUBFOLDERS) and _in_run(path):
        return f"a folder inside the run {path.resolve().parent}, not a run: report the run itself"
    return None


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories among `paths`: each is a run (has summary.json or config.yaml), an experiment folder of
    runs, or an output folder of experiments (`runs/`). lr-find outputs are not runs, wherever they are found.

    Raises:
        UserError: a path does not exist or is a file, a path is an lr-find output or a folder inside a run and no
            other path holds a run, or no run directory is found at all.
    """
    runs: dict[Path, None] = {}  # ordered and without duplicates
    skipped: list[str] = []  # paths given that are not runs
    lr_finds = 0  # lr-find outputs found inside the folders given
    for path in paths:
        if _is_run(path):
            runs[path] = None
        elif (what := _not_a_run(path)) is not None:
            skipped.append(f"{path}: {what}")
        elif path.is_dir():
            found = {
                p.parent for m in layout.REPORTABLE for pattern in (f"*/{m}", f"*/*/{m}") for p in path.glob(pattern)
            }
            runs.update(dict.fromkeys(sorted(p for p in found if _is_run(p))))
            lr_finds += sum(1 for p in found if p.is_dir() and _is_lr_find(p))
        elif path.exists():
            raise UserError(f"{path}: not a run directory or a folder of runs")
        else:
            raise UserError(f"{path}: no such run directory or folder")
    if not runs and skipped:
        raise UserError(skipped[0])
    if not runs:
        ignored = f" ({lr_finds} lr-find output{'s' if lr_finds > 1 else ''} ignored)" if lr_finds else ""
        raise UserError(
            f"no run directories (with {layout.SUMMARY} or {layout.CONFIG}) under {', '.join(map(str, paths))}{ignored}"
        )
    for line in skipped:
        log.warning("skipped %s", line)
    return list(runs)


NO_CONFIG = f"no {layout.CONFIG}"


def _read_config(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """config.yaml as a dict, and the reason when it cannot be read ({} then); read with the config reader's
    bounds (regular file, size, alias expansion, depth)."""
    try:
        config = safe_load(read_text(run_dir / layout.CONFIG, layout.CONFIG, CONFIG_BYTES))
    except UnreadableFile as e:
        return {}, NO_CONFIG if e.missing else e.reason
    except YAMLLimitError as e:
        return {}, f"{layout.CONFIG} refused{yaml_problem(e)}"
    except yaml.YAMLError as e:
        return {}, f"{layout.CONFIG} is not YAML ({first_line(e, 80)})"
    if not isinstance(config, dict):
        return {}, f"{layout.CONFIG} is not a mapping"
    return config, None


def load_record(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json with `run_dir` and `config` (config.yaml as a dict) added.

    A missing or corrupt summary.json, or a config.yaml that exists but cannot be read (not YAML, an alias bomb,
    nested too deep), gives status `unreadable` with the reason in `error` instead of raising, so that one broken
    directory cannot hide the other runs; a run with a readable summary and no config.yaml (an older layout) keeps
    its status, `config_error` saying why its config is empty. Every file is read with bounds (utils/bounded.py).
    """
    config, config_error = _read_config(run_dir)
    base: dict[str, Any] = {"run_dir": str(run_dir)}
    extra: dict[str, Any] = {"config": config, **({"config_error": config_error} if config_error else {})}
    try:
        summary = read_json(run_dir / layout.SUMMARY, what=layout.SUMMARY)
    except UnreadableFile as e:
        return {**base, "status": UNREADABLE, "error": f"no {layout.SUMMARY}" if e.missing else e.reason, **extra}
    if not isinstance(summary, dict):
        return {**base, "status": UNREADABLE, "error": f"{layout.SUMMARY} is not a JSON object", **extra}
    for key in ("final", "best", "seconds", "test_details"):  # what the tables and figures index into
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            return {**base, "status": UNREADABLE, "error": f"{layout.SUMMARY}: `{key}` is not an object", **extra}
    if config_error and config_error != NO_CONFIG:  # a wrong config would put the run in the wrong cell
        return {**base, **summary, "status": UNREADABLE, "error": config_error, **extra}
    return {**base, **summary, "status": str(summary.get("status", "unknown")), **extra}


def is_readable(record: dict[str, Any]) -> bool:
    return record.get("status") != UNREADABLE


def config_value(record: dict[str, Any], key: str) -> Any:
    """The value of a dotted config key in the record's config.yaml (summary.json's copy for model, dataset and
    epochs when the config lacks it); `_MISSING` when absent."""
    node: Any = record.get("config") or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            fallback = _SUMMARY_KEYS.get(key)
            return record[fallback] if fallback and record.get(fallback) is not None else _MISSING
        node = node[part]
    return node


def _flatten(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs; an empty mapping is no leaf, so `kwargs: {}` and `kwargs: {classes: 5}` differ
    only in `kwargs.classes`."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def config_keys(records: list[dict[str, Any]]) -> list[str]:
    """Every dotted leaf key of the records' configs, sorted."""
    keys = set(_SUMMARY_KEYS)
    for rec in records:
        keys.update(k for k, _ in _flatten(rec.get("config") or {}))
    return sorted(keys)


def differing_keys(records: list[dict[str, Any]]) -> list[str]:
    """The config keys whose value is not the same in every record with a config (a missing key counts as a
    value); a record without a readable config.yaml would make every key differ."""
    records = [r for r in records if r.get("config")]
    return [k for k in config_keys(records) if len({label(config_value(r, k)) for r in records}) > 1]


def check_keys(records: list[dict[str, Any]], keys: list[str], option: str) -> None:
    """A key that no run's config has is a typo, not a column of dashes.

    Raises:
        UserError: naming the option, the key and the closest keys that exist.
    """
    known = config_keys(records)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UserError(f"{option} {key}: no run's {layout.CONFIG} has this key{hint}")


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
    if value is _MISSING:
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
    if value is _MISSING:
        return (2, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, label(value))


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _is_percent(metric: str) -> bool:
    return metric.startswith("acc")


def _fmt(value: Any, metric: str) -> str:
    if _number(value) is None:
        return "–"
    return f"{100 * value:.2f} %" if _is_percent(metric) else f"{value:.4f}"


def _fmt_mean_std(values: list[float], metric: str) -> str:
    """One value as it is; several as mean ± sample std (n-1 in the denominator) with their count."""
    if len(values) == 1:
        return _fmt(values[0], metric)
    mean, std = statistics.mean(values), statistics.stdev(values)
    scale, unit, digits = (100, " %", 2) if _is_percent(metric) else (1, "", 4)
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


def _test_value(record: dict[str, Any], metric: str) -> float | None:
    return _number((record.get("final") or {}).get(f"test/{metric}"))


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


def _pivot_cell(records: list[dict[str, Any]], metric: str) -> Cell:
    """The metric over the finished runs of a cell, then a mark for every other run in it."""
    values, marks = [], []
    for rec in records:
        value = _test_value(rec, metric) if rec.get("status") == "finished" else None
        if value is not None:
            values.append(value)
        elif rec.get("status") == "finished":
            marks.append(f"finished, no test/{metric}")
        else:
            marks.append(status_text(rec, limit=60))
    parts = ([_fmt_mean_std(values, metric)] if values else []) + marks
    return Cell("; ".join(parts) or "–", sort=statistics.mean(values) if values else None)


def _metric_groups(records: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
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
    tables = []
    for metric, group in _metric_groups(records).items():
        rows: dict[str, tuple] = {}
        cols: dict[str, tuple] = {}
        cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for rec in group:
            (row, row_order), (col, col_order) = _key_label(rec, row_keys), _key_label(rec, col_keys)
            rows[row], cols[col] = row_order, col_order
            cells.setdefault((row, col), []).append(rec)
        row_labels = sorted(rows, key=lambda r: (rows[r], r))
        col_labels = sorted(cols, key=lambda c: (cols[c], c))
        table_rows = []
        for row in row_labels:
            in_row = [rec for col in col_labels for rec in cells.get((row, col), [])]
            readable = [rec for rec in in_row if is_readable(rec)]
            finished = [rec for rec in readable if rec.get("status") == "finished"]
            seconds = [_number((rec.get("seconds") or {}).get("total")) for rec in finished]
            table_rows.append(
                [
                    Cell(row),
                    *(
                        _pivot_cell(cells[row, col], metric or "") if (row, col) in cells else Cell("–")
                        for col in col_labels
                    ),
                    _range([p for rec in readable if (p := _number(rec.get("params"))) is not None], _fmt_int),
                    _range([e for rec in readable if (e := _number(rec.get("epochs"))) is not None], _fmt_int),
                    _range([s for s in seconds if s is not None], fmt_seconds),
                ]
            )
        shape = f"{', '.join(row_keys)} × {', '.join(col_keys)}"
        what = (
            f"test/{metric}" + (" (%)" if _is_percent(metric) else "")
            if metric
            else f"runs without a readable {layout.SUMMARY}"
        )
        title = f"{what}: {shape}"
        tables.append(
            Table(
                title=title,
                header=[", ".join(row_keys), *col_labels, "params", "epochs", "time/run"],
                numeric=[False, *([True] * len(col_labels)), True, True, True],
                rows=table_rows,
                notes=_pivot_notes(group, metric, row_keys, col_keys, cells),
            )
        )
    return tables


def _fmt_int(value: float) -> str:
    return f"{int(value):,}"


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
            + (", in %" if _is_percent(metric) else "")
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


def run_table(records: list[dict[str, Any]], keys: list[str] = ()) -> Table:
    """One row per run: run, the given config keys, model, dataset, params, test metric, best validation value
    (epoch), epochs completed/planned, wall-clock time and status. `Cell.href` links to `#run-<index>`."""
    keys = [k for k in keys if k not in ("model.name", "data.name")]
    rows = []
    for i, rec in enumerate(records):
        metric = rec.get("main_metric", "acc1")
        final, best = rec.get("final") or {}, rec.get("best") or {}
        test, best_val = _test_value(rec, metric), _number(best.get(f"val/{metric}"))
        seconds = _number((rec.get("seconds") or {}).get("total"))
        params = _number(rec.get("params"))
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
                    sort=_number(rec.get("epochs_completed")),
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
