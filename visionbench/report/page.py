"""`write_report`: `report.md` (results tables) and `report.html` (the same tables, sortable, plus every run's
figures and config) for a set of run directories; what `visionbench report` and `compare` call.

The HTML page is one self-contained file, so that it can be mailed or attached to an issue: no network reference,
figures embedded as base64 PNG, a few lines of inline vanilla JavaScript that sort a table when its header is
clicked, each run's config.yaml in a collapsible <details>.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

from visionbench import layout
from visionbench.errors import UserError, first_line
from visionbench.report import plots
from visionbench.report.records import UNREADABLE, check_keys, find_runs, is_readable, load_record
from visionbench.report.significance import result_tables
from visionbench.report.tables import (
    DEFAULT_ROWS,
    Cell,
    Table,
    cell_key,
    default_columns,
    latest_per_cell,
    md_paragraph,
    md_text,
    run_table,
    status_text,
    to_markdown,
)
from visionbench.utils.bounded import CONFIG_BYTES, UnreadableFile, read_text
from visionbench.utils.io import write_text
from visionbench.utils.names import storable


@dataclasses.dataclass
class FigureGrid:
    """PNG figures in a table, placed by row and column labels (a study's figure of each run, architectures by
    data models); a missing combination is an empty cell."""

    corner: str  # the header above the row labels
    rows: list[str]
    cols: list[str]
    images: dict[tuple[str, str], Path]


@dataclasses.dataclass
class Section:
    """A part of the page a caller adds above the tables of runs (a search's best trials, importances, history; a
    study's tables and figures): paragraphs, tables, PNG (or SVG) figures and grids of them (embedded in the HTML;
    linked relative to the report in the markdown), and links to files beside the report as (text, relative path).
    A section without a title has no heading."""

    title: str
    paragraphs: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Path] = dataclasses.field(default_factory=list)
    grids: list[FigureGrid] = dataclasses.field(default_factory=list)
    links: list[tuple[str, str]] = dataclasses.field(default_factory=list)


REPORT_MD = "report.md"
REPORT_HTML = "report.html"
_STATUS_ORDER = ("finished", "running", "failed", UNREADABLE)


def default_out_dir(paths: list[Path]) -> Path:
    """Where a report goes without `--out`: the folder given when it is the only path (an experiment folder, a
    folder of experiments or one run), else the current directory."""
    return paths[0] if len(paths) == 1 and paths[0].is_dir() else Path.cwd()


def _keys(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def write_report(
    paths: list[Path],
    out_dir: Path,
    rows: str | None = None,
    cols: str | None = None,
    latest: bool = False,
    sections: list[Section] = (),
    pivots: bool = True,
    title: str = "visionbench report",
    versus: str | None = None,
) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `out_dir` and every run's figures into `<run>/plots/`.

    Args:
        paths: run directories, experiment folders or folders of experiments.
        out_dir: created when missing.
        rows: dotted config key(s), comma-separated, whose values are the pivot's rows (default `model.name`).
        cols: the same for its columns (default: `data.name` when it differs and the `data.*` keys that differ
            between runs of one dataset; `data.name` when nothing differs).
        latest: keep only the newest run of each pivot cell.
        sections: parts placed before the results tables (a search's own tables and figures).
        pivots: False leaves the pivot tables out (a search's trials differ in many keys; its sections say more).
        title: the page's heading.
        versus: a row label of the pivots: every other row is tested against it on the same test images.

    Returns:
        The paths of report.md and report.html.

    Raises:
        UserError: a path that does not exist or holds no run, no readable run at all, an unknown key, an
            `out_dir` that is a file, or a `versus` row that is unknown or cannot be compared (significance.py).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder")
    records = [load_record(run) for run in find_runs(paths)]
    if not any(is_readable(rec) for rec in records):
        rec = records[0]
        many = f"{len(records)} run directories, none readable; " if len(records) > 1 else ""
        raise UserError(f"nothing to report: {many}{rec['run_dir']}: {rec['error']}")
    row_keys = _keys(rows) or list(DEFAULT_ROWS)
    check_keys(records, row_keys, "--rows")
    col_keys = _keys(cols)
    check_keys(records, col_keys, "--cols")
    col_keys = col_keys or default_columns(records, row_keys)
    if latest:
        records = latest_per_cell(records, key=lambda rec: cell_key(rec, row_keys, col_keys))

    tables = result_tables(records, row_keys, col_keys, versus) if pivots else []  # with intervals and --versus
    runs = run_table(records, row_keys + col_keys)
    figures = [draw_run(Path(rec["run_dir"])) for rec in records]

    md_path, html_path = out_dir / REPORT_MD, out_dir / REPORT_HTML
    write_text(md_path, render_markdown(records, tables, runs, sections, out_dir, title))
    write_text(html_path, render_html(records, tables, runs, figures, sections, title))
    return md_path, html_path


def draw_run(run_dir: Path, redraw: bool = True) -> tuple[list[Path], list[str]]:
    """The run's figures, and one line per figure that its files do not allow (a corrupt confusion matrix, ...).
    `redraw=False` keeps the figures in plots/ when every one of them is newer than the run's summary.json and
    metrics.csv (a study run again over finished runs: drawing is most of its time)."""
    paths, problems = [], []
    if not redraw and _drawn_since_written(run_dir):
        paths = sorted((run_dir / layout.PLOTS).glob("*.png"))
    else:
        for plotter in plots.PLOTTERS:
            try:
                paths += plotter(run_dir)
            except (UserError, OSError, ValueError) as e:
                problems.append(f"{plotter.__name__}: {first_line(e)}")
    paths += sorted((run_dir / layout.ANALYSIS).glob("*.png"))  # `visionbench analyze`'s figures, when there are any
    paths += sorted((run_dir / layout.EXPLAIN).glob("*/*.png"))  # `visionbench explain`'s grids, when there are any
    return paths, problems


def _drawn_since_written(run_dir: Path) -> bool:
    written = [p.stat().st_mtime_ns for p in (run_dir / layout.SUMMARY, run_dir / layout.METRICS) if p.is_file()]
    drawn = [p.stat().st_mtime_ns for p in (run_dir / layout.PLOTS).glob("*") if p.is_file()]
    return bool(written and drawn) and min(drawn) >= max(written)


def _status_line(records: list[dict[str, Any]]) -> str:
    counts = Counter(rec.get("status", "unknown") for rec in records)
    order = [s for s in _STATUS_ORDER if counts[s]] + sorted(s for s in counts if s not in _STATUS_ORDER)
    noun = "run" if len(records) == 1 else "runs"
    return f"{len(records)} {noun}: " + ", ".join(f"{counts[s]} {s}" for s in order) + "."


def render_markdown(
    records: list[dict[str, Any]],
    pivots: list[Table],
    runs: Table,
    sections: list[Section] = (),
    out_dir: Path | None = None,
    title: str = "visionbench report",
) -> str:
    """report.md: every name, value, message and path in it through `md_text` (a cell, a heading) or
    `md_paragraph`, so that a renderer shows it as written and never as HTML or markup."""
    parts = [f"# {md_text(title)}", md_paragraph(_status_line(records))]
    for section in sections:
        parts += [f"## {md_text(section.title)}"] if section.title else []
        parts += map(md_paragraph, section.paragraphs)
        parts += [
            to_markdown(t) if not t.title else f"**{md_text(t.title)}**\n\n{to_markdown(t)}" for t in section.tables
        ]
        parts += [md_image(png, out_dir) for png in section.figures]
        parts += [_grid_markdown(grid, out_dir) for grid in section.grids]
        if section.links:
            parts.append(" · ".join(f"[{md_text(text)}]({md_href(href)})" for text, href in section.links))
    for table in pivots:
        parts += [f"## {md_text(table.title)}", to_markdown(table)]
    parts += ["## Runs", to_markdown(runs)]
    return "\n\n".join(parts) + "\n"


def md_href(href: str) -> str:
    """A relative path as a markdown link target: percent-encoded, since a space, `)` or `<` in a folder name would
    end the link or open a tag."""
    return quote(storable(Path(href).as_posix()))


def md_image(png: Path, out_dir: Path | None, alt: str | None = None) -> str:
    """A figure as a markdown image, linked relative to `out_dir` (the markdown file's folder)."""
    href = os.path.relpath(png, out_dir) if out_dir is not None else str(png)
    return f"![{md_text(alt or png.stem)}]({md_href(href)})"


def _grid_markdown(grid: FigureGrid, out_dir: Path | None) -> str:
    lines = [
        "| " + " | ".join(md_text(h) for h in [grid.corner, *grid.cols]) + " |",
        "|" + "|".join([":---", *(":---:" for _ in grid.cols)]) + "|",
    ]
    for row in grid.rows:
        cells = [
            md_image(p, out_dir, f"{row}, {col}") if (p := grid.images.get((row, col))) else "" for col in grid.cols
        ]
        lines.append("| " + " | ".join([md_text(row), *cells]) + " |")
    return "\n".join(lines)


# --- HTML ---------------------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1b1f24; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f6f8fa; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num, th.num { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
p.note { color: #57606a; max-width: 70em; }
section.run { border-top: 1px solid #d0d7de; margin-top: 1.5em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption, .path { color: #57606a; font-size: 12px; }
table.grid th { cursor: default; }
table.grid img { max-width: 320px; height: auto; }
.failed, .unreadable, .problem { color: #cf222e; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
"""

# Click (or Enter on) a header to sort by that column, again to reverse. Numeric columns sort by data-sort (an
# empty one always last), the others by text with numbers in numeric order. Sorting is stable.
_JS = """
(function () {
  "use strict";
  function key(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) return cell.textContent.trim();
    return raw === "" ? null : parseFloat(raw);
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }
  function sortBy(table, th, col) {
    var heads = table.tHead.rows[0].cells;
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      var a = key(r.cells[col]), b = key(s.cells[col]);
      if (a === null || b === null) return (a === null) - (b === null);
      return ascending ? compare(a, b) : compare(b, a);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(table, th, col); }
      });
    });
  });
})();
"""


def _esc(text: Any) -> str:
    """Text and attribute values: every name, value, message and path on the page goes through here."""
    return html.escape(storable(str(text)), quote=True)


def _html_table(table: Table, table_id: str) -> str:
    num = ' class="num"'
    head = "".join(
        f'<th scope="col" tabindex="0"{num if numeric else ""}>{_esc(h)}</th>'
        for h, numeric in zip(table.header, table.numeric, strict=True)
    )
    body = []
    for row in table.rows:
        cells = []
        for cell, numeric in zip(row, table.numeric, strict=True):
            sort = "" if cell.sort is None else repr(cell.sort)
            attrs = f' class="num" data-sort="{sort}"' if numeric else ""
            text = f'<a href="{_esc(cell.href)}">{_esc(cell.text)}</a>' if cell.href else _esc(cell.text)
            cells.append(f"<td{attrs}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{_esc(note)}</p>' for note in table.notes)
    return (
        f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{notes}"
    )


def _figure_html(png: Path, run_dir: Path) -> str:
    if png.parent.name != layout.PLOTS:  # an explain grid: its path inside the run
        return _embed(png, png.relative_to(run_dir).as_posix(), f"{png.parent.name} {png.stem} of {run_dir.name}")
    files = [png.name, png.with_suffix(".svg").name] + (
        [f"{layout.CURVES}.csv"] if png.name == f"{layout.CURVES}.png" else []
    )
    return _embed(png, f"{layout.PLOTS}/" + ", ".join(files), f"{png.stem} of {run_dir.name}")


def _embed(png: Path, caption: str, alt: str | None = None) -> str:
    """A figure (PNG, or SVG: drawn by matplotlib, and an <img> runs no script of an SVG) inline in the page."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    mime = "image/svg+xml" if png.suffix == ".svg" else "image/png"
    return (
        f'<figure><img src="data:{mime};base64,{data}" alt="{_esc(alt or png.stem)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _run_section(index: int, rec: dict[str, Any], figures: tuple[list[Path], list[str]]) -> str:
    run_dir = Path(rec["run_dir"])
    status = rec.get("status", "unknown")
    parts = [
        f'<section class="run" id="run-{index}"><h3>{_esc(run_dir.name)}</h3>',
        f'<p class="path">{_esc(run_dir)}</p>',
        f'<p class="{_esc(status)}">{_esc(status_text(rec, limit=500))}</p>',
    ]
    paths, problems = figures
    parts += [f'<p class="problem">{_esc(p)}</p>' for p in problems]
    if paths:
        parts.append('<div class="figures">' + "".join(_figure_html(p, run_dir) for p in paths) + "</div>")
    parts += _details_html(rec, index)
    try:  # shown as text whatever it holds (an alias bomb is harmless unparsed), but only a bounded regular file
        config = read_text(run_dir / layout.CONFIG, layout.CONFIG, CONFIG_BYTES)
        parts.append(f"<details><summary>{layout.CONFIG}</summary><pre>{_esc(config)}</pre></details>")
    except UnreadableFile as e:
        parts.append(f'<p class="problem">{_esc(e.reason)}</p>')
    return "\n".join(parts) + "</section>"


# Rows of a per-class table shown unfolded; a longer one (ImageNet's 1,000 classes) starts folded
UNFOLDED_ROWS = 40


def _detail_cell(value: Any) -> Cell:
    """A value of summary.json's details: a number right-aligned and sortable, None (undefined) empty."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return Cell("" if value is None else str(value))
    text = str(value) if isinstance(value, int) else f"{value:.4f}" if abs(value) < 1e4 else f"{value:.6g}"
    return Cell(text, sort=float(value))


def _rows_table(title: str, first: str, rows: dict[str, Any]) -> Table | None:
    """A table of `{name: {column: value}}` (per class) or `{name: [{column: value}, ...]}` (bins per target):
    one row per name (or per name and bin), columns in the order of the first row; None when `rows` holds no such
    thing (a summary written by hand, an older layout)."""
    flat = (
        [(n, r) for n, v in rows.items() for r in (v if isinstance(v, list) else [v])] if isinstance(rows, dict) else []
    )
    if not flat or not all(isinstance(r, dict) for _, r in flat):
        return None
    keys = list(dict.fromkeys(k for _, r in flat for k in r))
    body = [[Cell(str(name)), *(_detail_cell(r.get(k)) for k in keys)] for name, r in flat]
    numeric = [all(row[j + 1].sort is not None or not row[j + 1].text for row in body) for j in range(len(keys))]
    return Table(title, [first, *keys], [False, *numeric], body)


def _with_scores(details: dict[str, Any]) -> Any:
    """`per_class` with the per-class AP or AUROC of the same details as a column each, when there are any."""
    table = details.get("per_class")
    if not isinstance(table, dict) or not all(isinstance(row, dict) for row in table.values()):
        return table
    scores = {k.removeprefix("per_class_"): details.get(k) for k in ("per_class_ap", "per_class_auroc")}
    scores = {k: v for k, v in scores.items() if isinstance(v, dict)}
    return {name: {**row, **{k: v.get(name) for k, v in scores.items()}} for name, row in table.items()}


def _details_tables(rec: dict[str, Any]) -> list[tuple[Table, str]]:
    """The per-class tables of summary.json's `test_details` and `val_details`, each with a line on calibration."""
    tables = []
    for split in ("test", "val"):
        details = rec.get(f"{split}_details")
        if not isinstance(details, dict):
            continue
        threshold = details.get("threshold")
        at = f" (decisions at probability > {threshold})" if isinstance(threshold, (int, float)) else ""
        calibration = details.get("calibration")
        note = (
            f"{split}: ECE {_detail_cell(calibration.get('ece')).text} ({calibration.get('ece_kind', '')}), "
            f"Brier score {_detail_cell(calibration.get('brier')).text}"
            if isinstance(calibration, dict)
            else ""
        )
        candidates = [
            (f"{split}: per class{at}", "class", _with_scores(details)),
            (f"{split}: MAE by range of the true target", "target", details.get("error_by_range")),
        ]
        if isinstance(details.get("most_confused"), list):
            pairs = {str(i + 1): p for i, p in enumerate(details["most_confused"])}
            candidates.append((f"{split}: most confused pairs", "rank", pairs))
        for title, first, rows in candidates:
            table = _rows_table(title, first, rows)
            if table is not None:
                tables.append((table, note))
                note = ""  # once per split
    return tables


def _details_html(rec: dict[str, Any], index: int) -> list[str]:
    parts = []
    for j, (table, note) in enumerate(_details_tables(rec)):
        folded = "" if len(table.rows) <= UNFOLDED_ROWS else " (folded: click to show)"
        parts.append(
            f"<details{' open' if not folded else ''}><summary>{_esc(table.title + folded)}</summary>"
            + (f'<p class="note">{_esc(note)}</p>' if note else "")
            + _html_table(table, f"run-{index}-details-{j}")
            + "</details>"
        )
    return parts


def _grid_html(grid: FigureGrid) -> str:
    head = "".join(f'<th scope="col">{_esc(h)}</th>' for h in [grid.corner, *grid.cols])
    rows = []
    for row in grid.rows:
        cells = [
            f"<td>{_embed(p, p.name, f'{row}, {col}')}</td>" if (p := grid.images.get((row, col))) else "<td></td>"
            for col in grid.cols
        ]
        rows.append(f'<tr><th scope="row">{_esc(row)}</th>{"".join(cells)}</tr>')
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_html(
    records: list[dict[str, Any]],
    pivots: list[Table],
    runs: Table,
    figures: list[tuple[list[Path], list[str]]],
    sections: list[Section] = (),
    title: str = "visionbench report",
) -> str:
    body = [f"<h1>{_esc(title)}</h1>", f"<p>{_esc(_status_line(records))}</p>"]
    for k, section in enumerate(sections):
        body += [f"<h2>{_esc(section.title)}</h2>"] if section.title else []
        body += [f"<p>{_esc(p)}</p>" for p in section.paragraphs]
        for j, table in enumerate(section.tables):
            body += ([f"<h3>{_esc(table.title)}</h3>"] if table.title else []) + [
                _html_table(table, f"section-{k}-{j}")
            ]
        if section.figures:
            body.append('<div class="figures">' + "".join(_embed(png, png.name) for png in section.figures) + "</div>")
        body += [_grid_html(grid) for grid in section.grids]
        if section.links:
            links = (f'<a href="{_esc(md_href(href))}">{_esc(text)}</a>' for text, href in section.links)
            body.append(f'<p class="path">{" · ".join(links)}</p>')
    for i, table in enumerate(pivots):
        body += [f"<h2>{_esc(table.title)}</h2>", _html_table(table, f"pivot-{i}")]
    body += ["<h2>Runs</h2>", _html_table(runs, "runs"), "<h2>Figures and configs</h2>"]
    body += [_run_section(i, rec, figs) for i, (rec, figs) in enumerate(zip(records, figures, strict=True))]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_JS}</script>\n</body>\n</html>\n"
    )
