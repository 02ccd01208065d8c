"""`visionbench report` end to end, in-process: report.html is one self-contained page (tables, embedded figures,
configs, no network reference), and bad input is one line on stderr with exit status 2 only where nothing useful
can be produced."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.cli.main import main
from visionbench.report import write_report
from visionbench.report.tables import md_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained_with_sortable_tables_figures_and_configs(experiment: Path, tmp_path: Path) -> None:
    run = experiment / "20260101-100000-small_cnn-mnist"
    confusion = {"class_names": ["0", "1"], "rows_true_cols_pred": [[9, 1], [2, 8]]}
    (run / layout.artifact(layout.CONFUSION_MATRIX)).write_text(json.dumps(confusion))
    md_path, html_path = write_report([experiment], tmp_path / "out", rows="model.name")
    assert (md_path, html_path) == (tmp_path / "out" / "report.md", tmp_path / "out" / "report.html")
    page = html_path.read_text()

    remote = re.findall(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//[^"')\s>]*""", page, flags=re.I)
    assert not remote, f"network references: {remote}"
    assert "<script src" not in page and '<link rel="stylesheet"' not in page, "scripts and styles are inline"

    assert page.count('<table class="sortable"') == 3, "the pivot, its intervals and the per-run table"
    assert '<td class="num" data-sort="0.91">91.00 ± 1.00 % (n=3)</td>' in page
    assert "running 3/10" in page and "failed: non-finite loss (nan) at epoch 2" in page
    assert "unreadable: summary.json is not JSON" in page
    assert 'href="#run-0"' in page and 'id="run-0"' in page, "each run's row links to its figures"

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # curves of the 7 runs (the corrupt one still has metrics.csv) and the confusion matrix of one
    assert len(images) == 8, len(images)
    assert all(base64.b64decode(data)[:8] == PNG_MAGIC for data in images)
    for stem in ("curves", "confusion_matrix"):
        assert (run / layout.PLOTS / f"{stem}.png").is_file() and (run / layout.PLOTS / f"{stem}.svg").is_file()

    assert page.count("<details><summary>config.yaml</summary>") == 7
    assert "name: small_cnn" in page and "experiment: exp" in page, "each run's config.yaml is on the page"


def test_one_folder_is_the_default_output_and_the_paths_are_printed_last(experiment: Path, capsys) -> None:
    assert main(["report", str(experiment)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [str(experiment / "report.md"), str(experiment / "report.html")]
    assert lines[0] == "# visionbench report"


def test_several_paths_report_into_the_current_directory(experiment: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = sorted(experiment.glob("*-small_cnn-mnist"))
    assert main(["report", *map(str, runs)]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [str(tmp_path / "report.md"), str(tmp_path / "report.html")]
    assert "| small_cnn | 91.00 ± 1.00 % (n=3) | 41,030 | 3 | 30–34 s |" in (tmp_path / "report.md").read_text()


def _one_line_error(capsys, code: int, needle: str) -> None:
    captured = capsys.readouterr()
    assert code == 2, f"exit status {code}, stderr: {captured.err}"
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in captured.err


def test_a_path_that_does_not_exist_is_exit_2(tmp_path: Path, capsys) -> None:
    _one_line_error(capsys, main(["report", str(tmp_path / "nope")]), "nope: no such run directory or folder")


def test_a_file_is_not_a_run_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_error(capsys, main(["report", str(tmp_path / "notes.txt")]), "not a run directory or a folder of runs")


def test_an_empty_folder_is_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, main(["report", str(tmp_path / "empty")]), "no run directories")
    assert not list((tmp_path / "empty").iterdir())


def test_a_half_written_run_alone_is_exit_2(tmp_path: Path, make_run, capsys) -> None:
    run = make_run(tmp_path, "half", summary=False)  # died before its first summary.json
    _one_line_error(capsys, main(["report", str(run)]), "nothing to report: ")
    assert not (run / "report.md").exists()


def test_a_half_written_run_among_good_ones_is_a_marked_row(tmp_path: Path, make_run, capsys) -> None:
    exp = tmp_path / "exp"
    make_run(exp, "20260101-a-small_cnn-mnist")
    make_run(exp, "20260101-b-small_cnn-mnist", summary=False, seed=1)
    assert main(["report", str(exp)]) == 0
    md = (exp / "report.md").read_text()
    assert "| small_cnn | 90.00 %; unreadable: no summary.json | 41,030 | 3 | 30 s |" in md, md
    assert md.rstrip().endswith("| 20260101-b-small_cnn-mnist | small_cnn | mnist | – | – | – | – | – | unreadable: no summary.json |")  # fmt: skip  # noqa: E501


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "summary.json is not JSON (Expecting value: line 1 column 1 (char 0))"),
        ("[1, 2]", "summary.json is not a JSON object"),
        ('{"status": "finished", "final": [0.9]}', "summary.json: `final` is not an object"),
        (b"\xff\xfe{", "summary.json is not JSON ("),
    ],
)
def test_a_corrupt_summary_among_good_runs_is_an_unreadable_row(tmp_path: Path, make_run, capsys, content, reason):
    exp = tmp_path / "exp"
    make_run(exp, "20260101-a-small_cnn-mnist")
    bad = make_run(exp, "20260101-b-small_cnn-mnist")
    summary = bad / layout.SUMMARY
    summary.write_bytes(content) if isinstance(content, bytes) else summary.write_text(content)
    assert main(["report", str(exp)]) == 0, capsys.readouterr().err
    last = (exp / "report.md").read_text().rstrip().splitlines()[-1]
    assert last.startswith("| 20260101-b-small_cnn-mnist | small_cnn | mnist | – |")
    assert md_text(f"unreadable: {reason}") in last, "the reason as markdown text (its backticks escaped)"


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--rows", "model.nme", "--rows model.nme: no run's config.yaml has this key; closest: model.name"),
        ("--cols", "data.kwargs.clases", "--cols data.kwargs.clases: no run's config.yaml has this key"),
    ],
)
def test_an_unknown_key_names_the_closest(experiment: Path, capsys, option: str, value: str, needle: str) -> None:
    _one_line_error(capsys, main(["report", str(experiment), option, value]), needle)


def test_out_that_is_a_file_is_exit_2(experiment: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("")
    _one_line_error(capsys, main(["report", str(experiment), "--out", str(tmp_path / "taken")]), "is not a folder")
