"""Per-tag logs in TensorBoard's CSV export layout (`Wall time,Step,Value`) and one SVG per tag, from a run's
metrics.csv: rows equal to its cells, names mapped as a study spells them, refusals before anything is written, never
a file written over that these logs did not write; `report --tag-logs`; the curves show train against val."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.cli.main import main
from visionbench.errors import UserError
from visionbench.report.plots import plot_curves
from visionbench.report.tag_logs import write_tag_logs


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / layout.METRICS, newline="") as f:
        return list(csv.DictReader(f))


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _assert_svg(path: Path) -> None:
    root = ET.fromstring(path.read_bytes())  # raises on anything but well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg", f"{path}: root element {root.tag}"


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_each_tag_is_a_csv_of_its_metrics_csv_cells_and_an_svg(tmp_path, make_run):
    run = make_run(tmp_path / "runs", "r1", train_metric=True, epochs=3)
    out = tmp_path / "logs"
    written = write_tag_logs(run, out)
    rows = _metrics(run)
    tags = ["train/loss", "train/acc1", "val/acc1", "val/loss", "test/acc1", "test/loss"]
    expected = {f"run-r1-tag-{t.replace('/', '_')}.csv" for t in tags} | {f"{t.replace('/', '_')}.svg" for t in tags}
    assert {p.name for p in written} == expected and _files(out) == expected | {layout.TAG_LOGS_INDEX}
    for tag in tags:
        got = _csv(out / f"run-r1-tag-{tag.replace('/', '_')}.csv")
        assert got[0] == ["Wall time", "Step", "Value"]
        assert got[1:] == [[r[layout.WALL_TIME], r["epoch"], r[tag]] for r in rows if r[tag]], tag
        _assert_svg(out / f"{tag.replace('/', '_')}.svg")
    assert len(_csv(out / "run-r1-tag-test_acc1.csv")) == 2, "test is evaluated on the last epoch only: one point"
    index = json.loads((out / layout.TAG_LOGS_INDEX).read_text())["files"]
    assert set(index) == expected and set(index.values()) == {"../runs/r1"}


def test_names_and_run_name_spell_the_files_as_a_study_does(tmp_path, make_run):
    run = make_run(tmp_path / "runs", "r1", metric="map", train_metric=True)
    names = {"train/map": "train_ap", "val/loss": "valid_loss", "val/map": "valid_ap"}
    written = write_tag_logs(run, tmp_path / "v1", tags=["train/loss", *names], names=names, run_name="resnet18")
    assert sorted(p.name for p in written) == sorted(
        [f"run-resnet18-tag-{n}.csv" for n in ("train_loss", "train_ap", "valid_loss", "valid_ap")]
        + [f"{n}.svg" for n in ("train_loss", "train_ap", "valid_loss", "valid_ap")]
    )
    assert _csv(tmp_path / "v1" / "run-resnet18-tag-valid_ap.csv")[1:] == [
        [r[layout.WALL_TIME], r["epoch"], r["val/map"]] for r in _metrics(run)
    ]


def test_a_name_is_drawn_as_written(tmp_path, make_run):
    run = make_run(tmp_path / "runs", "r1", train_metric=True)
    write_tag_logs(run, tmp_path / "out", tags=["val/acc1"], names={"val/acc1": "a_$b^c$"})
    svg = (tmp_path / "out" / "a_$b^c$.svg").read_text()
    assert "a_$b^c$" in svg, "the title is the name itself, not math text"


def test_writing_again_replaces_its_own_files_with_the_same_bytes(tmp_path, make_run):
    run = make_run(tmp_path / "runs", "r1", train_metric=True)
    out = tmp_path / "out"
    write_tag_logs(run, out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    write_tag_logs(run, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tags": ["val/f1"]}, "no column 'val/f1'"),
        ({"tags": ["train/loss"], "names": {"val/loss": "valid_loss"}}, "'val/loss' is not among the tags"),
        ({"tags": ["val/loss"], "names": {"val/loss": "../valid_loss"}}, "expected a file name without '/'"),
        ({"names": {"val/loss": "same", "train/loss": "same"}}, "would both be written as 'same'"),
        ({"run_name": ".hidden"}, "the run name is '.hidden'"),
        ({"run_name": "r" * 250}, "longer than a file name may be"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, make_run, kwargs, needle):
    run = make_run(tmp_path / "runs", "r1", train_metric=True)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(".", r"\.").replace("$", r"\$")) as e:
        write_tag_logs(run, tmp_path / "out", **kwargs)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_a_run_without_wall_times_is_refused_naming_its_metrics_csv(tmp_path, make_run):
    run = make_run(tmp_path / "runs", "old")  # written before metrics.csv had wall_time
    with pytest.raises(UserError, match=f"{layout.METRICS}: no {layout.WALL_TIME} column"):
        write_tag_logs(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_it_did_not_write_is_never_written_over(tmp_path, make_run):
    runs = tmp_path / "runs"
    one, two = (make_run(runs, name, train_metric=True) for name in ("r1", "r2"))
    out = tmp_path / "study"
    out.mkdir()
    (out / "val_loss.svg").write_text("the user's own figure")
    with pytest.raises(UserError, match="val_loss.svg: exists and was not written by tag logs; nothing written"):
        write_tag_logs(one, out)
    assert _files(out) == {"val_loss.svg"} and (out / "val_loss.svg").read_text() == "the user's own figure"

    write_tag_logs(one, out, tags=["train/loss"])  # a tag that does not meet the user's file
    with pytest.raises(UserError, match=r"train_loss.csv: exists and was written for another run \(\.\./runs/r1\)"):
        write_tag_logs(two, out, tags=["train/loss"], run_name="r1")  # same file names, another run
    assert _csv(out / "run-r1-tag-train_loss.csv")[1:] == [
        [r[layout.WALL_TIME], r["epoch"], r["train/loss"]] for r in _metrics(one)
    ]


def test_inside_a_run_only_under_its_own_plots(tmp_path, make_run):
    one, two = (make_run(tmp_path / "runs", name, train_metric=True) for name in ("r1", "r2"))
    with pytest.raises(UserError, match="inside the run directory"):
        write_tag_logs(one, two / layout.PLOTS / layout.TAG_LOGS)
    with pytest.raises(UserError, match="inside the run directory"):
        write_tag_logs(one, one)
    assert write_tag_logs(one, one / layout.PLOTS / layout.TAG_LOGS)


def test_report_tag_logs_writes_each_runs_logs_under_its_plots(tmp_path, make_run, capsys):
    runs = tmp_path / "runs"
    for name in ("r1", "r2"):
        make_run(runs, name, train_metric=True)
    assert main(["report", str(runs), "--tag-logs"]) == 0
    for name in ("r1", "r2"):
        folder = runs / name / layout.PLOTS / layout.TAG_LOGS
        assert f"run-{name}-tag-train_acc1.csv" in _files(folder) and "train_acc1.svg" in _files(folder)

    make_run(runs, "old")  # no wall_time: the command refuses in one line, before writing any run's logs
    capsys.readouterr()
    assert main(["report", str(runs), "--tag-logs"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{layout.WALL_TIME} column" in err, err
    assert not (runs / "old" / layout.PLOTS).exists()


def test_curves_show_the_train_metric_beside_val(tmp_path, make_run):
    run = make_run(tmp_path, "r1", train_metric=True)
    plot_curves(run)
    with open(run / layout.PLOTS / f"{layout.CURVES}.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["epoch", "train/loss", "val/loss", "test/loss", "train/acc1", "val/acc1", "test/acc1"]
