"""`analyze --suite failures`: only wrong decisions, most confident first, for each kind of output; the gallery's
table, figure and place in the report."""

from __future__ import annotations

import csv

import pytest
import torch

from visionbench import layout
from visionbench.analysis import failures
from visionbench.cli.main import main
from visionbench.data.base import DatasetInfo
from visionbench.report.page import REPORT_HTML
from visionbench.tasks import create_task


def _task(kind: str, names: tuple[str, ...], **kwargs):
    return create_task(kind, DatasetInfo("t", kind, len(names), names, (1, 8, 8)), **kwargs)


def test_classification_lists_only_wrong_predictions_by_the_predicted_probability_ties_in_split_order():
    names = ("a", "b", "c")
    probs = torch.tensor(
        [
            [0.8, 0.1, 0.1],  # 0: a, true a (right)
            [0.2, 0.7, 0.1],  # 1: b, true a (wrong, 0.7)
            [0.1, 0.1, 0.8],  # 2: c, true b (wrong, 0.8)
            [0.5, 0.4, 0.1],  # 3: a, true c (wrong, 0.5)
            [0.2, 0.7, 0.1],  # 4: b, true c (wrong, 0.7: a tie with 1, after it)
            [0.1, 0.1, 0.8],  # 5: c, true c (right)
        ]
    )
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    found = failures.rank(_task("classification", names), probs, targets, names, k=10)
    assert [r["index"] for r in found.rows] == [2, 1, 4, 3]
    assert found.rows[0] == {"index": 2, "true": "b", "predicted": "c", "probability": pytest.approx(0.8)}
    assert found.columns == ["index", "true", "predicted", "probability"]
    assert [r["index"] for r in failures.rank(_task("classification", names), probs, targets, names, 2).rows] == [2, 1]
    assert "#2\ntrue b\npred c (0.80)" == found.captions[0]


def test_multilabel_ranks_each_wrong_label_by_the_probability_of_the_decision_taken_and_skips_ignored_labels():
    names = ("cat", "dog")
    task = _task("multilabel", names, threshold=0.3)
    probs = torch.tensor([[0.35, 0.05], [0.1, 0.9], [0.95, 0.2], [0.6, 0.6]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    found = failures.rank(task, probs, targets, names, k=10)
    # wrong: (0, cat) positive at 0.35 > 0.3 but absent: confidence 0.35; (0, dog) negative but present: 0.95;
    # (1, cat) negative but present: 0.9. (2, cat) is ignored (-1), however confident.
    assert [(r["index"], r["label"]) for r in found.rows] == [(0, "dog"), (1, "cat"), (0, "cat")]
    assert [r["confidence"] for r in found.rows] == pytest.approx([0.95, 0.9, 0.35])
    assert found.rows[2] == {
        "index": 0,
        "label": "cat",
        "true": "absent",
        "predicted": "present",
        "probability": pytest.approx(0.35),
        "confidence": pytest.approx(0.35),
    }


def test_regression_ranks_every_image_and_target_by_the_absolute_error():
    names = ("mass", "radius")
    task = _task("regression", names)
    preds = torch.tensor([[1.0, 0.0], [2.0, 5.0], [0.0, -3.0]])
    targets = torch.tensor([[1.5, 0.0], [-1.0, 5.0], [0.0, 1.0]])
    found = failures.rank(task, preds, targets, names, k=3)
    assert [(r["index"], r["target"], r["abs_error"]) for r in found.rows] == [
        (2, "radius", 4.0),
        (1, "mass", 3.0),
        (0, "mass", 0.5),
    ]
    assert found.rows[0]["true"] == 1.0 and found.rows[0]["predicted"] == -3.0


def test_no_wrong_decision_gives_an_empty_table_and_a_figure_that_says_so(tmp_path):
    from visionbench.analysis.suite import _table

    names = ("a", "b")
    found = failures.rank(_task("classification", names), torch.eye(2), torch.tensor([0, 1]), names, 5)
    assert found.rows == [] and found.captions == []
    result = _table(tmp_path / "failures.csv", found.rows, "none", found.columns)
    assert result.path.read_text().splitlines() == ["index,true,predicted,probability"]
    png = failures.draw(tmp_path / "failures.png", torch.rand(2, 1, 8, 8), found, "none")
    assert png.stat().st_size > 1000 and png.with_suffix(".svg").is_file()


def test_the_gallery_of_a_run_lists_its_wrong_test_predictions_and_the_report_shows_it(tiny_run, capsys):
    from visionbench.engine.inference import load_run, predict_outputs, split_images

    assert main(["analyze", str(tiny_run), "--suite", "failures", "--top-k", "5", "--weights", "last"]) == 0
    out = tiny_run / layout.ANALYSIS
    with (out / f"{layout.FAILURES}.csv").open() as f:
        rows = list(csv.DictReader(f))
    run = load_run(tiny_run, "last")
    images, targets = split_images(run, "test", 2000)
    probs = predict_outputs(run, images)
    pred = probs.argmax(1)
    wrong = (pred != targets).nonzero().flatten()
    assert len(wrong) >= 5, "the tiny run is wrong often enough to fill the gallery"
    assert len(rows) == 5
    names = run.info.class_names
    for r in rows:
        i = int(r["index"])
        assert pred[i] != targets[i], f"image {i} is predicted right"
        assert (r["true"], r["predicted"]) == (names[targets[i]], names[pred[i]])
        assert float(r["probability"]) == pytest.approx(float(probs[i].max()), abs=1e-6)
    shown = [float(r["probability"]) for r in rows]
    assert shown == sorted(shown, reverse=True)
    assert shown[0] == pytest.approx(float(probs[wrong].max(1).values.max()), abs=1e-6), "the most confident first"
    assert (out / f"{layout.FAILURES}.png").stat().st_size > 1000
    assert "most confident wrong decisions of 128 test images" in capsys.readouterr().out
    assert main(["report", str(tiny_run)]) == 0
    assert f"{layout.ANALYSIS}/{layout.FAILURES}.png" in (tiny_run / REPORT_HTML).read_text()
