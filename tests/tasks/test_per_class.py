"""Per-class results of the task objects against numbers worked by hand: precision, recall, F1 and support of a
fixed confusion (undefined ratios as None, not 0), the most-confused pairs, multi-label per-class F1 at the task's
threshold with ignored targets, and regression's MAE by quantile bin of the true target."""

from __future__ import annotations

import pytest
import torch

from visionbench import layout
from visionbench.data.base import DatasetInfo
from visionbench.tasks import create_task


def _task(kind: str, names: tuple[str, ...], **kwargs):
    return create_task(kind, DatasetInfo("t", kind, len(names), names, (1, 8, 8)), **kwargs)


# rows true, columns predicted: class `c` is never predicted, class `d` is absent from the split
#          a  b  c  d
# a      [ 3, 1, 0, 0 ]
# b      [ 2, 2, 0, 0 ]
# c      [ 0, 2, 0, 0 ]
TRUE = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
PRED = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
EXPECTED = {  # precision tp / predicted, recall tp / support, F1 2pr / (p + r)
    "a": {"precision": 3 / 5, "recall": 3 / 4, "f1": 2 * 0.6 * 0.75 / 1.35, "support": 4},
    "b": {"precision": 2 / 5, "recall": 2 / 4, "f1": 2 * 0.4 * 0.5 / 0.9, "support": 4},
    "c": {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2},  # never predicted: precision 0/0
    "d": {"precision": None, "recall": None, "f1": None, "support": 0},  # neither present nor predicted
}


def _fixed_confusion():
    task = _task("classification", ("a", "b", "c", "d"))
    logits = torch.nn.functional.one_hot(torch.tensor(PRED), 4).float() * 3
    return task, logits, torch.tensor(TRUE)


def test_per_class_precision_recall_f1_and_support_match_a_confusion_worked_by_hand():
    task, logits, targets = _fixed_confusion()
    table = task.details(logits, targets)["per_class"]
    assert list(table) == ["a", "b", "c", "d"]
    for name, expected in EXPECTED.items():
        for key, value in expected.items():
            got = table[name][key]
            assert got == (None if value is None else pytest.approx(value, abs=1e-6)), (name, key, got)


def test_the_per_class_csv_columns_hold_the_same_table_as_the_summary():
    task, logits, targets = _fixed_confusion()
    columns = task.artifacts(logits, targets)[layout.PER_CLASS]
    assert list(columns) == ["class", "precision", "recall", "f1", "support"]
    assert columns["class"] == ["a", "b", "c", "d"] and columns["support"] == [4, 4, 2, 0]
    assert columns["precision"][2] is None and columns["recall"][3] is None
    assert columns["f1"][0] == pytest.approx(2 / 3, abs=1e-6)


def test_most_confused_pairs_are_the_largest_off_diagonal_cells_with_their_share_of_the_true_class():
    task, logits, targets = _fixed_confusion()
    pairs = task.details(logits, targets)["most_confused"]
    # two cells of 2 (b->a, then c->b in row order), then a->b; the diagonal and empty cells never appear
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "a", 2), ("c", "b", 2), ("a", "b", 1)]
    assert [p["share_of_true"] for p in pairs] == [0.5, 1.0, 0.25]


def test_per_class_results_do_not_change_when_images_are_permuted():
    task, logits, targets = _fixed_confusion()
    perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    a, b = task.details(logits, targets), task.details(logits[perm], targets[perm])
    assert a["per_class"] == b["per_class"] and a["most_confused"] == b["most_confused"]


def test_multilabel_per_class_f1_is_at_the_task_threshold_and_skips_ignored_targets():
    names = ("cat", "dog", "bird")
    probs = torch.tensor([[0.9, 0.45, 0.1], [0.6, 0.2, 0.2], [0.2, 0.8, 0.1], [0.35, 0.6, 0.2]])
    targets = torch.tensor([[1, 1, 0], [0, -1, 0], [1, 1, 0], [1, 0, -1]])
    logits = torch.logit(probs)
    # threshold 0.5: cat predicted in images 0, 1 (tp 1, fp 1), missed in 2, 3 -> p 1/2, r 1/3, F1 0.4;
    # dog predicted in 2, 3 (image 1 ignored): tp 1, fp 1, fn 1 -> F1 0.5; bird: no positive, none predicted
    at_half = _task("multilabel", names, threshold=0.5).details(logits, targets)
    cat = {"precision": 0.5, "recall": pytest.approx(1 / 3, abs=1e-6), "f1": 0.4, "support": 3}
    assert at_half["per_class"]["cat"] == cat
    assert at_half["per_class"]["dog"]["f1"] == 0.5 and at_half["per_class"]["dog"]["support"] == 2
    assert at_half["per_class"]["bird"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert at_half["threshold"] == 0.5 and "per_class_ap" in at_half  # AP stays beside it
    # threshold 0.3: cat predicted in 0, 1, 3 (tp 2, fp 1, fn 1) -> F1 2/3; dog in 0, 2, 3 (tp 2, fp 1) -> F1 0.8
    at_low = _task("multilabel", names, threshold=0.3).details(logits, targets)["per_class"]
    assert at_low["cat"]["f1"] == pytest.approx(2 / 3, abs=1e-6) and at_low["dog"]["f1"] == pytest.approx(0.8)


def test_regression_mae_by_range_is_the_mae_inside_each_quantile_bin_of_the_true_target():
    task = _task("regression", ("y",), standardize_targets=False)
    true = torch.arange(100, dtype=torch.float32)
    pred = true + (true // 20)  # the error grows by one per fifth of the range: 0 in the lowest, 4 in the highest
    bins = task.details(pred[:, None], true[:, None])["error_by_range"]["y"]
    assert [b["count"] for b in bins] == [20] * 5
    assert [b["mae"] for b in bins] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert bins[0]["low"] == 0.0 and bins[-1]["high"] == 99.0
    assert all(a["high"] == b["low"] for a, b in zip(bins, bins[1:], strict=False)), "contiguous bins"
    columns = task.artifacts(pred[:, None], true[:, None])[layout.ERROR_BY_RANGE]
    assert list(columns) == ["target", "low", "high", "count", "mae"] and columns["mae"] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_regression_bins_merge_where_ties_make_quantile_edges_equal():
    task = _task("regression", ("a", "b"), standardize_targets=False)
    true = torch.stack([torch.full((10,), 3.0), torch.arange(10.0)], 1)  # target a: one value only
    bins = task.details(true + 1, true)["error_by_range"]
    assert bins["a"] == [{"low": 3.0, "high": 3.0, "count": 10, "mae": 1.0}]
    assert sum(b["count"] for b in bins["b"]) == 10 and len(bins["b"]) == 5


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 7])
def test_a_small_split_gets_no_empty_range_bin(n):
    task = _task("regression", ("y",), standardize_targets=False)
    true = torch.rand(n, 1, generator=torch.Generator().manual_seed(n))
    bins = task.details(true + 1, true)["error_by_range"]["y"]
    assert all(b["count"] > 0 for b in bins) and sum(b["count"] for b in bins) == n, bins
