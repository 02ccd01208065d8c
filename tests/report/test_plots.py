"""Per-run figures as PNG and SVG under `<run>/plots/`, for a classification, a multi-label and a regression run
written as fixtures: each file is a valid PNG (magic bytes) or parses as SVG XML, and the curves are exported."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.errors import UserError
from visionbench.report.plots import plot_confusion, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_figures(run: Path, stems: set[str]) -> None:
    plots = run / layout.PLOTS
    figures = {p.stem for p in plots.glob("*.png")}
    assert figures == stems, figures
    for stem in stems:
        png, svg = plots / f"{stem}.png", plots / f"{stem}.svg"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000, f"{png}: not a PNG figure"
        root = ET.fromstring(svg.read_bytes())  # raises on anything but well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg", f"{svg}: root element {root.tag}"
    assert not list(plots.glob(".*.tmp")), "no temp file of an atomic write is left behind"


def test_classification_run_gets_curves_confusion_matrix_and_per_class_auroc(tmp_path: Path, make_run) -> None:
    names = ["T-shirt/top", "Trouser", "Pullover"]
    run = make_run(tmp_path, "cls", test_details={"per_class_auroc": dict(zip(names, [0.99, 1.0, None], strict=True))})
    confusion = {"class_names": names, "rows_true_cols_pred": [[90, 2, 8], [1, 99, 0], [12, 0, 88]]}
    (run / layout.artifact(layout.CONFUSION_MATRIX)).write_text(json.dumps(confusion))
    pngs = plot_run(run)
    assert [p.name for p in pngs] == ["curves.png", "confusion_matrix.png", "per_class_auroc.png"]
    _assert_figures(run, {"curves", "confusion_matrix", "per_class_auroc"})
    with open(run / layout.PLOTS / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train/loss", "val/loss", "test/loss", "val/acc1", "test/acc1"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[-1]["test/acc1"] == "0.9", rows


def test_multilabel_run_gets_per_class_ap_bars_with_unscored_classes(tmp_path: Path, make_run) -> None:
    per_class = {"bag": 0.71, "shoe": 0.93, "shirt": None, "coat": 0.5}  # shirt: no positive in the test split
    run = make_run(tmp_path, "ml", dataset="fashion-mnist-mosaic", metric="map", task="MultilabelTask",
                   test_details={"per_class_ap": per_class})  # fmt: skip
    plot_run(run)
    _assert_figures(run, {"curves", "per_class_ap"})


def test_regression_run_gets_predicted_against_true(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path, "reg", dataset="lens", metric="mae", mode="min", value=0.12, task="RegressionTask")
    lines = ["true,pred"] + [f"{i / 10},{i / 10 + 0.05 * (-1) ** i}" for i in range(40)]
    (run / layout.artifact(layout.PREDICTIONS, suffix=".csv")).write_text("\n".join(lines) + "\n")
    plot_run(run)
    _assert_figures(run, {"curves", "pred_vs_true"})
    assert (run / layout.PLOTS / "curves.csv").read_text().splitlines()[
        0
    ] == "epoch,train/loss,val/loss,test/loss,val/mae,test/mae"


def test_figures_are_a_pure_function_of_the_run_files(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path, "again", test_details={"per_class_auroc": {"a": 0.5, "b": 0.75}})
    first = {p: p.read_bytes() for p in (run / layout.PLOTS).glob("*")} if plot_run(run) else {}
    plot_run(run)
    assert first and {p: p.read_bytes() for p in (run / layout.PLOTS).glob("*")} == first, "redrawn byte for byte"


def test_a_run_without_epochs_or_artifacts_has_no_figures(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path, "early", status="running", completed=0)
    assert plot_run(run) == [] and not (run / layout.PLOTS).exists()


def test_a_corrupt_confusion_matrix_is_a_user_error_naming_the_file(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path, "bad")
    (run / layout.artifact(layout.CONFUSION_MATRIX)).write_text(
        '{"class_names": ["a", "b"], "rows_true_cols_pred": [[1, 2]]}'
    )
    with pytest.raises(UserError, match="confusion_matrix_test.json"):
        plot_confusion(run)
