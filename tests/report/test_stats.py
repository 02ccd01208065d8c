"""Confidence intervals and paired tests (report/stats.py, report/significance.py) and the per-image outputs they
resample (visionbench/per_image.py): McNemar's exact test against a table worked by hand, the bootstrap's coverage
over seeded synthetic trials, the metrics recomputed on resamples against torchmetrics, and the report's interval
and `--versus` tables from fixture runs with per-image files written here. CPU, no training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import beta

from visionbench import layout, per_image
from visionbench.cli.main import main
from visionbench.errors import UserError
from visionbench.report import stats
from visionbench.report.page import write_report
from visionbench.utils.bounded import UnreadableFile


def _acc1_arrays(correct: np.ndarray, classes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-image outputs of a classifier that gets exactly the images of `correct` right."""
    targets = np.random.default_rng(seed).integers(0, classes, len(correct)).astype(np.int32)
    preds = np.where(correct, targets, (targets + 1) % classes).astype(np.int32)
    return {"targets": targets, "preds": preds, "correct": correct.astype(bool)}


def _outputs(metric: str, arrays: dict[str, np.ndarray]) -> per_image.PerImage:
    return per_image.PerImage(metric, "test", arrays, "", "test")


# --- McNemar ------------------------------------------------------------------------------------------------------


def test_mcnemar_exact_p_value_and_interval_match_a_table_worked_by_hand() -> None:
    # 20 images: both right on 6, both wrong on 4, only a right on 1, only b right on 9.
    # Under the null each of the 10 discordant images favours b with probability 1/2, so the number favouring a is
    # Binomial(10, 1/2); the two-sided exact p-value doubles the lower tail at 1:
    #   p = 2 * (C(10,0) + C(10,1)) / 2**10 = 2 * (1 + 10) / 1024 = 22 / 1024 = 0.021484375.
    # Difference b - a = (9 - 1) / 20 = 0.4. The Clopper-Pearson interval of b's share 9/10 is
    # [Beta(0.025; 9, 2), Beta(0.975; 10, 1)], scaled to all images: (10 / 20) * (2 * share - 1).
    a = np.array([1] * 6 + [0] * 4 + [1] * 1 + [0] * 9, dtype=bool)
    b = np.array([1] * 6 + [0] * 4 + [0] * 1 + [1] * 9, dtype=bool)
    result = stats.mcnemar(a, b)
    assert result.p == pytest.approx(22 / 1024, rel=1e-12), result
    assert result.difference == pytest.approx(0.4)
    low, high = beta.ppf(0.025, 9, 2), beta.ppf(0.975, 10, 1)
    assert (result.low, result.high) == pytest.approx((0.5 * (2 * low - 1), 0.5 * (2 * high - 1)), rel=1e-9)
    assert 0 < result.low < result.difference < result.high, "p < 0.05: the interval leaves 0 out, as the test does"
    assert result.test == "McNemar exact (9 vs 1 images)" and result.images == 20
    swapped = stats.mcnemar(b, a)
    assert swapped.p == result.p and swapped.difference == -result.difference, "the test is symmetric"


def test_mcnemar_of_identical_predictions_is_no_difference() -> None:
    right = np.array([True, False, True])
    result = stats.mcnemar(right, right)
    assert (result.difference, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)


def test_paired_uses_mcnemar_for_two_single_accuracy_runs_and_the_bootstrap_for_cells_of_several() -> None:
    rng = np.random.default_rng(5)
    runs = [_outputs("acc1", _acc1_arrays(rng.random(200) < p)) for p in (0.6, 0.7, 0.8)]
    single = stats.paired([runs[0]], [runs[1]])
    assert single.test.startswith("McNemar exact")
    several = stats.paired([runs[0]], [runs[1], runs[2]])
    assert several.test == "paired bootstrap"
    expected = np.mean([runs[1].arrays["correct"].mean(), runs[2].arrays["correct"].mean()])
    assert several.difference == pytest.approx(expected - runs[0].arrays["correct"].mean())
    assert several.low < several.difference < several.high and 1 / (stats.RESAMPLES + 1) <= several.p <= 1


# --- the bootstrap ------------------------------------------------------------------------------------------------


def test_paired_bootstrap_interval_covers_the_true_difference_in_at_least_90_of_100_seeded_trials() -> None:
    """Two regressors on the same 200 images, with correlated Gaussian errors of standard deviation 1 and 1.2:
    the true difference of their mean absolute errors is (1.2 - 1) * sqrt(2 / pi). A 95 % interval should miss it
    in about 5 of 100 trials; 10 misses or more would mean the interval is too narrow. (Over 1,000 such trials it
    covered 94.8 %, so 100 trials give at least 90 with probability 0.97; the seed makes the draw fixed.)"""
    rng = np.random.default_rng(0)
    truth = 0.2 * math.sqrt(2 / math.pi)
    n, covered = 200, 0
    for trial in range(100):
        shared, own = rng.standard_normal((2, n))
        targets = rng.standard_normal((n, 1)).astype(np.float32)
        err_a, err_b = shared, 1.2 * (0.6 * shared + 0.8 * own)  # correlation 0.6, as two models' errors are
        a = _outputs("mae", {"targets": targets, "preds": targets + err_a[:, None].astype(np.float32)})
        b = _outputs("mae", {"targets": targets, "preds": targets + err_b[:, None].astype(np.float32)})
        result = stats.paired([a], [b], seed=trial)
        assert result.test == "paired bootstrap"
        covered += result.low <= truth <= result.high
    assert covered >= 90, f"the 95 % interval covered the true difference in {covered} of 100 trials"


def test_resamples_are_reproducible_and_draw_every_image_n_times_in_all() -> None:
    first = np.concatenate(list(stats.resample_counts(50, 30, seed=3)))
    again = np.concatenate(list(stats.resample_counts(50, 30, seed=3)))
    assert first.shape == (30, 50) and (first.sum(1) == 50).all(), "each resample draws n images"
    assert np.array_equal(first, again), "a fixed seed gives the same resamples"
    assert not np.array_equal(first, np.concatenate(list(stats.resample_counts(50, 30, seed=4))))


def test_t_interval_is_student_t_on_the_mean() -> None:
    # 3 values 0.90, 0.91, 0.92: mean 0.91, sample std 0.01, t(0.975, 2) = 4.3027
    low, high = stats.t_interval([0.90, 0.91, 0.92])
    assert (low, high) == pytest.approx((0.91 - 4.302653 * 0.01 / math.sqrt(3), 0.91 + 4.302653 * 0.01 / math.sqrt(3)))


# --- metrics on resamples -----------------------------------------------------------------------------------------


def _multilabel(n: int = 300, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets (1, 0, -1 ignored), the scores rounded so that many tie, one class without positives."""
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, classes, generator=g) < 0.3).float()
    targets[:, -1] = 0
    targets[torch.rand(n, classes, generator=g) < 0.05] = -1
    logits = (torch.randn(n, classes, generator=g) + 1.5 * targets.clamp_min(0)).mul(4).round().div(4)
    return logits, targets


def test_metrics_on_a_resample_equal_torchmetrics_on_the_images_drawn() -> None:
    """A resample as counts gives what the task's own metrics give on the images drawn, duplicates and all: ties,
    ignored entries and a class without positives included (macro AP), accuracy and MAE."""
    from visionbench.data.base import DatasetInfo
    from visionbench.tasks.classification import ClassificationTask
    from visionbench.tasks.multilabel import MultilabelTask
    from visionbench.tasks.regression import RegressionTask

    idx = torch.as_tensor(np.random.default_rng(1).integers(0, 300, 300))
    counts = np.bincount(idx.numpy(), minlength=300)[None].astype(np.int32)
    logits, targets = _multilabel()
    cls_targets = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(2))
    values = torch.randn(300, 2, generator=torch.Generator().manual_seed(3))
    for task_class, outputs, y in [
        (MultilabelTask, logits, targets),
        (ClassificationTask, logits[:, :4], cls_targets),
        (RegressionTask, values, values.flip(0)),
    ]:
        classes = tuple(str(i) for i in range(outputs.shape[1]))
        task = task_class(DatasetInfo("t", task_class.name, len(classes), classes, (1, 4, 4)))
        metric = task.metrics()[task.main_metric]
        metric.update(outputs[idx], y[idx])
        with torch.no_grad():
            arrays = per_image._METRICS[task.main_metric].pack(outputs, task.activate(outputs), y)
        drawn = per_image.score(_outputs(task.main_metric, arrays), counts)[0]
        assert drawn == pytest.approx(float(metric.compute()), abs=1e-6), task.main_metric


# --- the file -----------------------------------------------------------------------------------------------------


def test_per_image_file_round_trips_and_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / layout.per_image()
    arrays = _acc1_arrays(np.array([True, False, True, True]))
    per_image.write_arrays(path, "acc1", arrays)
    data = per_image.load(path)
    assert data.metric == "acc1" and data.images == 4 and per_image.value(data) == 0.75
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # in the last array's data
    path.write_bytes(bytes(raw))
    with pytest.raises(UnreadableFile, match="checksum mismatch"):
        per_image.load(path)
    scores = np.zeros((4, 5), np.float32)  # 5 classes of scores for 3 of targets: digests right, shapes not
    per_image.write_arrays(path, "map", {"targets": np.zeros((4, 3), np.int8), "scores": scores})
    with pytest.raises(UnreadableFile, match="`scores` is missing or not 2-D floating shaped as the targets"):
        per_image.load(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(UnreadableFile, match="a directory, expected a regular file"):
        per_image.load(path)


# --- the report ---------------------------------------------------------------------------------------------------


def _with_outputs(make_run, root: Path, name: str, arrays: dict[str, np.ndarray], metric: str = "acc1", **kw) -> Path:
    """A fixture run whose summary's test value is what its per-image outputs give."""
    value = per_image.value(_outputs(metric, arrays))
    mode = "min" if metric == "mae" else "max"
    run = make_run(root, name, metric=metric, mode=mode, value=round(value, 6), **kw)
    per_image.write_arrays(run / layout.per_image(), metric, arrays)
    return run


def _md(tmp_path: Path, *args: str) -> str:
    assert main(["report", *args, "--out", str(tmp_path / "out")]) == 0
    return (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_a_single_run_gets_a_bootstrap_interval_of_its_own_metric(tmp_path: Path, make_run) -> None:
    logits, targets = _multilabel(n=200)
    arrays = {"scores": logits.sigmoid().numpy(), "targets": targets.numpy().astype(np.int8)}
    run = _with_outputs(make_run, tmp_path / "exp", "voc-run", arrays, metric="map")
    data = per_image.load(run / layout.per_image())
    low, high = stats.bootstrap_interval(data)
    assert low < per_image.value(data) < high
    md = _md(tmp_path, str(tmp_path / "exp"))
    assert f"| small_cnn | \\[{low:.4f}, {high:.4f}\\] (bootstrap, 200 images) |" in md, md


def test_per_image_outputs_that_do_not_give_the_summary_value_are_not_used(tmp_path: Path, make_run) -> None:
    run = make_run(tmp_path / "exp", "a", value=0.9)
    per_image.write_arrays(run / layout.per_image(), "acc1", _acc1_arrays(np.array([True, False])))
    md = _md(tmp_path, str(tmp_path / "exp"))
    assert "gives test/acc1 0.500000, summary.json says 0.900000: not this run's final outputs" in md, md
    with pytest.raises(UserError, match="--versus small_cnn: .*gives test/acc1 0.500000"):
        write_report([tmp_path / "exp"], tmp_path / "out", versus="small_cnn")


def test_versus_compares_every_row_in_each_column_and_refuses_other_test_images(tmp_path: Path, make_run) -> None:
    rng = np.random.default_rng(0)
    exp = tmp_path / "exp"
    base, better = rng.random(400) < 0.7, rng.random(400) < 0.8
    _with_outputs(make_run, exp, "1-base", _acc1_arrays(base), model="base")
    _with_outputs(make_run, exp, "2-better", _acc1_arrays(better), model="better")
    md = _md(tmp_path, str(exp), "--versus", "base")
    expected = stats.mcnemar(base, better)
    diff = f"{100 * expected.difference:+.2f}"
    interval = f"\\[{100 * expected.low:+.2f}, {100 * expected.high:+.2f}\\]"
    row = f"| better | mnist | 400 | {diff} | {interval} | {expected.p:.3g} | {expected.test} |"
    assert row in md, md
    # the same images in another order: the same accuracy, but no pairing
    order = rng.permutation(400)
    shuffled = {k: v[order] for k, v in _acc1_arrays(base).items()}
    _with_outputs(make_run, exp, "3-shuffled", shuffled, model="shuffled")
    with pytest.raises(UserError, match="not tested on the same test images .*their test targets differ"):
        write_report([exp], tmp_path / "out", versus="base")


def test_versus_refuses_runs_of_another_test_subset_and_unknown_rows(tmp_path: Path, make_run, capsys) -> None:
    exp = tmp_path / "exp"
    right = np.random.default_rng(1).random(50) < 0.5
    _with_outputs(make_run, exp, "a", _acc1_arrays(right), model="a")
    b = _with_outputs(make_run, exp, "b", _acc1_arrays(right), model="b")
    config = (b / layout.CONFIG).read_text()
    (b / layout.CONFIG).write_text(config.replace("subset: null", "subset: null\n  test_subset: 50"))
    md = _md(tmp_path, str(exp), "--versus", "a")  # by default the test subset is a column of its own
    assert "| model.name | 50 | – | params |" in md and "No other row has a finished run in a column of a." in md
    with pytest.raises(UserError, match=r"not tested on the same test images \(data.test_subset\)"):
        write_report([exp], tmp_path / "out", cols="data.name", versus="a")
    capsys.readouterr()
    assert main(["report", str(exp), "--out", str(tmp_path / "out"), "--versus", "c"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--versus c: no such row; the rows are: a, b") and len(err.splitlines()) == 1, err


def test_versus_refuses_a_run_without_per_image_outputs(tmp_path: Path, make_run) -> None:
    exp = tmp_path / "exp"
    _with_outputs(make_run, exp, "a", _acc1_arrays(np.array([True, False, True])), model="a")
    make_run(exp, "b", model="b", value=0.5)
    with pytest.raises(UserError, match="--versus a: .*per_image_test.safetensors: no usable per-image test outputs"):
        write_report([exp], tmp_path / "out", versus="a")
