"""A study's README.md and report.html from run directories written file by file (no training): tables in the
study's own layout (rows and columns by labels, several metrics per column, notes, extras, formats, seeds as
mean ± std (n), runs that did not finish marked, a reference table), figures (a grid of per-run figures, curves across
cells as PNG/SVG/CSV, per-run figures with the files beside them), names shown as written, and a metric no run
records refused before anything is written."""

from __future__ import annotations

import csv
import html as html_module
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt

from visionbench import layout
from visionbench.errors import UserError
from visionbench.report.study import write_study
from visionbench.report.tables import Group, ValueColumn, labelled_table, to_markdown
from visionbench.study import read_study

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke" / "synthetic.yaml"
COMMONMARK = MarkdownIt("commonmark", {"html": True}).enable(["table"])


def _study(tmp_path: Path, cells: str, layout_text: str, name: str = "study") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"title: A study\ncells:\n{cells}\n{layout_text}", encoding="utf-8")
    return path


def _cell(labels: str, extra: str = "") -> str:
    return f"  - config: {SMOKE}\n    labels: {labels}\n" + "".join(f"    {line}\n" for line in extra.splitlines())


def _write_runs(study, make_run, values: dict[str, list[dict]]) -> None:
    """Each run of each cell (by its title) as a fixture run directory, with the options given in order."""
    for cell in study.cells:
        for run, options in zip(cell.runs, values.get(cell.title, []), strict=False):
            make_run(run.run_dir.parent, run.run_dir.name, **options)


def _table_lines(md: str, first_header: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_table_rows_and_columns_by_labels_notes_extras_formats_and_seeds(tmp_path: Path, make_run) -> None:
    cells = "".join(
        [
            _cell("{arch: ResNet, model: Model I}", "notes: [pretrained]\nseeds: [0, 1, 2]"),
            _cell("{arch: ResNet, model: Model II}", "notes: [pretrained]"),
            _cell("{arch: ViT, model: Model I}", "notes: ['patch {model.kwargs}']"),
            _cell("{arch: ViT, model: Model III}", "notes: [patch 8]"),
        ]
    )
    table = """\
tables:
  - title: MAE on test
    rows: arch
    cols: model
    row_header: NN Architecture
    columns: [{metric: test/acc1, format: .2%}]
    extra: [{value: epochs, header: Epoch}, params, optim.lr]
"""
    study = read_study(_study(tmp_path, cells, table), out=tmp_path / "out")
    _write_runs(
        study,
        make_run,
        {
            "arch=ResNet, model=Model I": [{"value": 0.90, "seed": 0}, {"value": 0.92, "seed": 1}, {"value": 0.94}],
            "arch=ResNet, model=Model II": [{"value": 0.5, "status": "failed", "completed": 1, "error": "boom\nx"}],
            "arch=ViT, model=Model I": [{"value": 0.8, "epochs": 5, "params": 100}],
        },
    )
    md = write_study(study)[0].read_text(encoding="utf-8")
    assert _table_lines(md, "NN Architecture") == [
        "| NN Architecture | Model I | Model II | Model III | Epoch | params | optim.lr |",
        "|---|---:|---:|---:|---:|---:|---:|",
        "| ResNet (pretrained) | 92.00% ± 2.00% (n=3) | failed: boom |  | 3 | 41,030 | 0.05 |",
        "| ViT | 80.00% (patch {}) |  | not started (patch 8) | 5 | 100 | 0.05 |",
    ], md
    assert "Values at the last epoch; a cell of several runs (seeds) shows mean ± sample std" in md


def test_several_metrics_per_column_with_headers_and_a_reference_table() -> None:
    def run(loss: float, acc: float) -> dict:
        return {"status": "finished", "run_dir": "r", "final": {"train/loss": loss, "val/acc1": acc}, "config": {}}

    groups = [
        Group({"version": "v1", "split": "a"}, (), [run(3.1240, 0.6809)], {"train/loss": 3.0, "val/acc1": 0.7}),
        Group({"version": "v2", "split": "a"}, (), [run(2.5, 0.75), run(2.7, 0.77)]),
    ]
    columns = [ValueColumn("train/loss", "Loss (Train)", ".4f"), ValueColumn("val/acc1", "AP (Valid)", ".3f")]
    table = labelled_table("", groups, "version", "split", columns, row_header="Model version")
    assert to_markdown(table).splitlines()[:4] == [
        "| Model version | a Loss (Train) | a AP (Valid) |",
        "|---|---:|---:|",
        "| v1 | 3.1240 | 0.681 |",
        "| v2 | 2.6000 ± 0.1414 (n=2) | 0.760 ± 0.014 (n=2) |",
    ]
    no_cols = labelled_table("", groups, "version", None, columns, reference=True)
    assert [[c.text for c in row] for row in no_cols.rows] == [["v1", "3.0000", "0.700"], ["v2", "", ""]]
    assert no_cols.header == ["version", "Loss (Train)", "AP (Valid)"]


def test_figures_grid_curves_and_run_files_exist_and_are_linked(tmp_path: Path, make_run) -> None:
    cells = _cell("{arch: a, model: I}", "seeds: [0, 1]") + _cell("{arch: b, model: II}")
    figures = """\
figures:
  - {kind: grid, title: Curves of each run, figure: curves, rows: arch, cols: model}
  - {kind: curves, title: Across cells, metrics: [val/loss, {metric: train/loss, file: train_loss_all}]}
  - {kind: runs, title: Run figures, figures: [curves]}
"""
    study = read_study(_study(tmp_path, cells, figures), out=tmp_path / "out")
    _write_runs(
        study,
        make_run,
        {"arch=a, model=I": [{"seed": 0}, {"seed": 1, "epochs": 4}], "arch=b, model=II": [{"epochs": 2}]},
    )
    md_path, html_path = write_study(study)
    md = md_path.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) == 2 + 2 + 3, images  # a grid of 2 of 2x2 cells, 2 curves, 3 runs' curves
    for src in images:
        assert (study.out / unquote(src)).is_file(), src
    figures_dir = study.out / layout.STUDY_FIGURES
    for name in ("val_loss", "train_loss_all"):
        assert all((figures_dir / f"{name}{suffix}").is_file() for suffix in (".png", ".svg", ".csv")), name
    with open(figures_dir / "val_loss.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "arch=a, model=I (seed 0)", "arch=a, model=I (seed 1)", "arch=b, model=II"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert rows[3][1:] == [repr(1.1 / 3), repr(1.1 / 3), ""]  # epoch 3: runs of 3, 4 and 2 epochs
    assert "[curves.svg](runs/arch%3Da__model%3DI__seed%3D0/plots/curves.svg)" in md
    html = html_path.read_text(encoding="utf-8")
    assert html.count('<table class="grid">') == 1 and "data:image/png;base64," in html


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


HOSTILE = '<img src=x onerror="alert(1)"> *a* | `c` $x_1$ [l](javascript:alert(1))'


def test_names_with_markup_are_shown_as_written_in_readme_html_and_figures(tmp_path: Path, make_run) -> None:
    cells = _cell(f"{{arch: '{HOSTILE}', model: '_I_'}}", "notes: ['<b>n</b> & $y$']")
    layout_text = """\
description: ["<script>alert(2)</script> **bold**"]
tables: [{title: '<i>t</i> | x', rows: arch, cols: model, columns: [{metric: test/acc1, header: '<u>h</u>'}]}]
figures:
  - {kind: grid, title: g, figure: curves, rows: arch, cols: model}
  - {kind: curves, title: c, metrics: [val/loss]}
"""
    study = read_study(_study(tmp_path, cells, layout_text), out=tmp_path / "out")
    _write_runs(study, make_run, {study.cells[0].title: [{}]})
    md_path, html_path = write_study(study)
    md, html = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    rendered = COMMONMARK.render(md)
    parsed = _Elements()
    parsed.feed(rendered)
    tags = {tag for tag, _ in parsed.tags}
    assert tags <= {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "img", "a", "strong"}, tags
    assert all(
        "onerror" not in attrs and not attrs.get("href", "").startswith("javascript") for _, attrs in parsed.tags
    )
    text = html_module.unescape(rendered)
    assert HOSTILE in text and "<b>n</b> & $y$" in text and "<script>alert(2)</script> **bold**" in text
    page = _Elements()
    page.feed(html)
    assert not [t for t, attrs in page.tags if t in ("i", "u", "b") or "onerror" in attrs]
    assert [t for t, _ in page.tags].count("script") == 1  # the page's own sorting script only
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_a_metric_no_finished_run_records_is_refused_before_anything_is_written(tmp_path: Path, make_run) -> None:
    table = "tables: [{title: t, rows: arch, columns: [test/acc1, val/ap]}]"
    study = read_study(_study(tmp_path, _cell("{arch: a}"), table), out=tmp_path / "out")
    _write_runs(study, make_run, {"arch=a": [{}]})
    with pytest.raises(
        UserError, match=r"study\.yaml: tables\[0\]\.columns\[1\]\.metric: no finished run records val/ap; "
    ):
        write_study(study)
    assert not (study.out / layout.STUDY_README).exists() and not (study.out / layout.STUDY_HTML).exists()


def test_runs_not_started_yet_are_listed_and_do_not_stop_the_readme(tmp_path: Path) -> None:
    table = "tables: [{title: t, rows: arch, columns: [test/acc1]}]"
    study = read_study(_study(tmp_path, _cell("{arch: a}") + _cell("{arch: b}"), table), out=tmp_path / "out")
    md = write_study(study)[0].read_text(encoding="utf-8")
    assert "| a | not started |" in md and "2 runs: 2 not started." in md


def test_extra_image_size_and_unset_config_values() -> None:
    """`image_size` is the height (and width) the model took, from summary.json; a config key set to null is `–`."""
    from visionbench.report.tables import extra_cell

    def run(size: object, crop: object) -> dict:
        info = {} if size is None else {"input_size": size}
        return {"status": "finished", "run_dir": "r", "data_info": info, "config": {"data": {"eval_crop_pct": crop}}}

    assert extra_cell([run([3, 384, 384], 1.0), run([3, 384, 384], 1.0)], "image_size").text == "384"
    assert extra_cell([run([3, 32, 48], 0.875), run([1, 28, 28], 0.875)], "image_size").text == "28, 32x48"
    assert extra_cell([run(None, None), run("big", None)], "image_size").text == "–"
    assert extra_cell([run([3, 32, 32], None)], "data.eval_crop_pct").text == "–"
    assert extra_cell([run([3, 32, 32], None), run([3, 32, 32], 0.9)], "data.eval_crop_pct").text == "0.9, –"
