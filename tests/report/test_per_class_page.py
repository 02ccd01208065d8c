"""The report's per-class section and reliability diagram, from fixture run directories: class names shown as
text (never markup), undefined scores empty, the per-class AP beside F1, and a reliability file that does not hold
bins named in one line instead of a figure."""

from __future__ import annotations

import json

from visionbench import layout
from visionbench.report.page import write_report
from visionbench.report.plots import plot_reliability

MARKUP = "<script>alert(1)</script>"


def _details(names: list[str]) -> dict:
    per_class = {n: {"precision": 0.5, "recall": 0.25, "f1": 0.333333, "support": 4} for n in names}
    per_class[names[-1]] = {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2}
    return {
        "per_class": per_class,
        "per_class_ap": {n: 0.75 for n in names},
        "most_confused": [{"true": names[0], "predicted": names[1], "count": 3, "share_of_true": 0.75}],
        "calibration": {"ece": 0.0421, "brier": 0.3, "ece_kind": "multiclass top-label, 15 bins"},
    }


def test_the_run_section_shows_per_class_tables_with_names_as_text(tmp_path, make_run):
    names = [MARKUP, "a&b", "plain"]
    make_run(tmp_path / "exp", "run", test_details=_details(names))
    _, html_path = write_report([tmp_path / "exp"], tmp_path / "out")
    page = html_path.read_text()
    assert MARKUP not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a&amp;b" in page
    assert "test: per class" in page and "test: most confused pairs" in page
    assert "ECE 0.0421 (multiclass top-label, 15 bins), Brier score 0.3000" in page
    table = page[page.index("test: per class") :]
    table = table[: table.index("</table>")]
    assert '<th scope="col" tabindex="0" class="num">ap</th>' in table, "AP beside F1"
    assert '<td class="num" data-sort="">' in table and '<td class="num">None' not in table, "None shown empty"


def test_details_that_are_not_tables_are_left_out_not_an_error(tmp_path, make_run):
    make_run(tmp_path / "exp", "run", test_details={"per_class": ["not", "a", "table"], "most_confused": "x"})
    _, html_path = write_report([tmp_path / "exp"], tmp_path / "out")
    assert "per class" not in html_path.read_text()


def _reliability(path, bins: dict) -> None:
    path.write_text(json.dumps({"ece": 0.1, "brier": 0.2, "ece_kind": "binary over all labels, 15 bins", "bins": bins}))


def test_the_reliability_diagram_is_drawn_from_the_split_files(tmp_path, make_run):
    run = make_run(tmp_path / "exp", "run")
    bins = {"low": [0.0, 0.5], "high": [0.5, 1.0], "count": [3, 0], "confidence": [0.3, None], "observed": [0.2, None]}
    _reliability(run / layout.artifact(layout.RELIABILITY, "test"), bins)
    (png,) = plot_reliability(run)
    assert png == run / layout.PLOTS / f"{layout.RELIABILITY}.png" and png.stat().st_size > 0
    assert png.with_suffix(".svg").is_file()


def test_a_reliability_file_without_bins_is_one_problem_line_on_the_page(tmp_path, make_run):
    run = make_run(tmp_path / "exp", "run")
    _reliability(run / layout.artifact(layout.RELIABILITY, "val"), {"low": [0.0], "high": []})
    _, html_path = write_report([tmp_path / "exp"], tmp_path / "out")
    page = html_path.read_text()
    assert "plot_reliability: " in page and "expected bins with equal-length lists" in page
