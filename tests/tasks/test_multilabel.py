"""Multi-label task: masked BCE, mAP / per-class AP / F1 against hand-computed values, ignored entries."""

from __future__ import annotations

import math

import pytest
import torch

from visionbench.data.base import DatasetInfo
from visionbench.errors import UserError
from visionbench.tasks import create_task


def _task(num_classes: int = 3, **kwargs):
    info = DatasetInfo("t", "multilabel", num_classes, tuple("abcdefgh"[:num_classes]), (1, 8, 8))
    return create_task("multilabel", info, **kwargs)


def _scores(task, logits, targets) -> dict[str, float]:
    metrics = task.metrics()
    metrics.update(logits, targets)
    return {k: float(v) for k, v in metrics.compute().items()}


def _ap(scores: list[float], labels: list[int]) -> float:
    """Average precision by hand: the mean of the precision at each positive, ranked by descending score."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / sum(labels)


def test_ap_f1_and_loss_match_hand_computed_values():
    # 4 images, 2 classes; class 0 ranked pos, neg, pos, neg -> AP (1/1 + 2/3) / 2; class 1 perfectly ranked
    probs = torch.tensor([[0.9, 0.8], [0.7, 0.1], [0.6, 0.7], [0.2, 0.3]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    logits = torch.logit(probs)
    task = _task(2)
    s = _scores(task, logits, targets)
    ap0 = _ap(probs[:, 0].tolist(), [1, 0, 1, 0])
    assert ap0 == pytest.approx((1 + 2 / 3) / 2)
    assert s["map"] == pytest.approx((ap0 + 1.0) / 2, abs=1e-6)
    # F1 at 0.5: class 0 predicts {0,1,2}: tp 2, fp 1, fn 0 -> 0.8; class 1 predicts {0,2}: 1.0
    assert s["f1"] == pytest.approx((0.8 + 1.0) / 2, abs=1e-6)
    bce = -sum(
        math.log(p) if t else math.log(1 - p)
        for p, t in zip(probs.flatten().tolist(), targets.flatten().tolist(), strict=True)
    )
    assert s["loss"] == pytest.approx(bce / 8, rel=1e-5)
    details = task.details(logits, targets)["per_class_ap"]
    assert details == {"a": pytest.approx(ap0, abs=1e-6), "b": pytest.approx(1.0)}


def test_ignored_entries_drop_out_of_loss_and_metrics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 3, generator=g)
    targets = (torch.rand(12, 3, generator=g) > 0.5).float()
    targets[:4, 0] = 1.0  # make sure every class has positives and negatives
    targets[4:8, 0] = 0.0
    marked = targets.clone()
    marked[8:, 0] = -1  # "difficult": ignored for class 0 only
    task = _task(3)
    # same as dropping those (image, class) pairs: class 0 scored on images 0..7 only
    full, ignored = _scores(task, logits, marked), task.details(logits, marked)["per_class_ap"]
    ap0 = _ap(logits[:8, 0].tolist(), targets[:8, 0].long().tolist())
    assert ignored["a"] == pytest.approx(ap0, abs=1e-6)
    assert ignored["b"] == pytest.approx(_ap(logits[:, 1].tolist(), targets[:, 1].long().tolist()), abs=1e-6)
    assert full["map"] == pytest.approx(sum(ignored.values()) / 3, abs=1e-6)
    keep = marked != -1
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], targets[keep])
    assert float(task.loss(logits, marked)) == pytest.approx(float(expected), rel=1e-5)


def test_pos_weight_scales_the_positive_term():
    logits, targets = torch.zeros(4, 2), torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    plain, weighted = _task(2), _task(2, pos_weight=[3.0, 1.0])
    # at logit 0 every term is log 2; the three positives of class 0... weigh 3 (class 0) or 1 (class 1)
    assert float(plain.loss(logits, targets)) == pytest.approx(math.log(2))
    assert float(weighted.loss(logits, targets)) == pytest.approx(math.log(2) * (8 + 2 * 2) / 8)
    with pytest.raises(UserError, match="pos_weight"):
        _task(2, pos_weight=[1.0, 2.0, 3.0])


def test_a_class_without_positives_has_no_ap_in_the_details():
    logits = torch.randn(5, 2)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert _task(2).details(logits, targets)["per_class_ap"]["b"] is None


def test_map_averages_only_the_classes_with_positives():
    logits = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [1.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # class b has no positive
    assert _scores(_task(2), logits, targets)["map"] == pytest.approx(1.0)


def test_f1_thresholds_probabilities_even_when_every_logit_lies_in_0_1():
    # logits 0.1 .. 0.3 are probabilities 0.52 .. 0.57: all positive at 0.5, although torchmetrics would have taken
    # the logits themselves for probabilities (every value in [0, 1]) and called them all negative
    logits, targets = torch.tensor([[0.3, 0.3], [0.2, 0.1]]), torch.ones(2, 2)
    assert _scores(_task(2), logits, targets)["f1"] == 1.0
