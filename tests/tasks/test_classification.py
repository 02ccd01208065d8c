"""Classification task: loss, metrics properties, artifacts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench.data.base import DatasetInfo
from visionbench.tasks import create_task


def _task(num_classes: int, label_smoothing: float = 0.0):
    info = DatasetInfo("t", "classification", num_classes, tuple(map(str, range(num_classes))), (1, 8, 8))
    return create_task("classification", info, label_smoothing=label_smoothing)


def _scores(task, logits, targets) -> dict[str, float]:
    metrics = task.metrics()
    metrics.update(logits, targets)
    return {k: float(v) for k, v in metrics.compute().items()}


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 64), num_classes=st.integers(2, 12), seed=st.integers(0, 10**6))
def test_perfect_predictions_score_one(n, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=g)
    logits = torch.nn.functional.one_hot(targets, num_classes).float() * 10
    scores = _scores(_task(num_classes), logits, targets)
    assert scores["acc1"] == 1.0 and scores.get("acc5", 1.0) == 1.0


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 64), num_classes=st.integers(2, 12), seed=st.integers(0, 10**6))
def test_metrics_do_not_change_when_samples_are_permuted(n, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    logits, targets = torch.randn(n, num_classes, generator=g), torch.randint(0, num_classes, (n,), generator=g)
    perm = torch.randperm(n, generator=g)
    task = _task(num_classes)
    a, b = _scores(task, logits, targets), _scores(task, logits[perm], targets[perm])
    assert a.keys() == b.keys()
    for key in a:
        assert abs(a[key] - b[key]) < 1e-5, key


def test_label_smoothing_changes_the_training_loss_not_the_reported_loss():
    logits, targets = torch.randn(16, 5), torch.randint(0, 5, (16,))
    plain, smooth = _task(5), _task(5, label_smoothing=0.2)
    assert not torch.isclose(plain.loss(logits, targets), smooth.loss(logits, targets))
    assert _scores(plain, logits, targets)["loss"] == _scores(smooth, logits, targets)["loss"]


def test_confusion_matrix_counts_every_sample():
    targets = torch.tensor([0, 1, 2, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 2, 2, 1]), 3).float()
    matrix = _task(3).artifacts(logits, targets)["confusion_matrix"]["rows_true_cols_pred"]
    assert matrix == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_task_must_fit_the_dataset():
    import pytest

    from visionbench.errors import UserError

    info = DatasetInfo("t", "classification", 3, ("a", "b", "c"), (1, 8, 8))
    with pytest.raises(UserError, match="does not fit dataset"):
        create_task("regression", info)


def _pairwise_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC AUC by hand: the fraction of (positive, negative) pairs ranked right, ties counting one half."""
    pos, neg = scores[positive], scores[~positive]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def test_auroc_is_one_vs_rest_per_class_and_their_macro_mean():
    info = DatasetInfo("t", "classification", 3, ("none", "cdm", "axion"), (1, 8, 8))
    task = create_task("classification", info, auroc=True)
    g = torch.Generator().manual_seed(3)
    targets = torch.arange(30) % 3
    logits = torch.randn(30, 3, generator=g) + 1.5 * torch.nn.functional.one_hot(targets, 3)
    probs = logits.softmax(-1)
    expected = [_pairwise_auc(probs[:, c], targets == c) for c in range(3)]
    assert 0.5 < min(expected) and max(expected) < 1.0, "a non-trivial case"
    per_class = task.details(logits, targets)["per_class_auroc"]
    assert list(per_class) == ["none", "cdm", "axion"]
    for name, value in zip(per_class, expected, strict=True):
        assert per_class[name] == pytest.approx(value, abs=1e-5)
    assert _scores(task, logits, targets)["auroc"] == pytest.approx(sum(expected) / 3, abs=1e-5)
    assert "auroc" not in _scores(_task(3), logits, targets)
    assert "per_class_auroc" not in _task(3).details(logits, targets)


def test_auroc_skips_a_class_missing_from_the_split():
    info = DatasetInfo("t", "classification", 3, ("none", "cdm", "axion"), (1, 8, 8))
    task = create_task("classification", info, auroc=True)
    targets = torch.tensor([0, 0, 1, 1, 0, 1])  # no axion
    logits = torch.tensor([[2.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 1, 0], [0, 1.5, 0], [1.2, 0, 0]])
    probs = logits.softmax(-1)
    per_class = task.details(logits, targets)["per_class_auroc"]
    assert per_class["axion"] is None
    expected = [_pairwise_auc(probs[:, c], targets == c) for c in range(2)]
    assert [per_class["none"], per_class["cdm"]] == pytest.approx(expected, abs=1e-5)
    assert _scores(task, logits, targets)["auroc"] == pytest.approx(sum(expected) / 2, abs=1e-5)


def test_auroc_ranks_images_by_softmax_probability_even_when_every_logit_lies_in_0_1():
    # class a's logit ranks image 1 (0.6) above image 0 (0.5, the one true a); its softmax probability ranks image 0
    # first (0.44 against 0.35 and 0.31): AUC 1, where the raw logits would give 0.5
    info = DatasetInfo("t", "classification", 3, ("a", "b", "c"), (1, 8, 8))
    task = create_task("classification", info, auroc=True)
    logits, targets = torch.tensor([[0.5, 0.0, 0.1], [0.6, 0.0, 0.9], [0.0, 0.2, 0.0]]), torch.tensor([0, 1, 2])
    probs = logits.softmax(-1)
    expected = _pairwise_auc(probs[:, 0], targets == 0)
    assert expected == 1.0 and _pairwise_auc(logits[:, 0], targets == 0) == 0.5
    assert task.details(logits, targets)["per_class_auroc"]["a"] == pytest.approx(expected, abs=1e-6)
