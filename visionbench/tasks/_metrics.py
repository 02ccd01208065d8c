"""Metric machinery the tasks share: a stock torchmetrics metric fed what a task's outputs need first (`Fed`), the
macro mean of a per-class score over the classes a split can score (`MacroMean`), and the tasks' own metrics.

The tasks import this module (and torchmetrics) only where they build metrics: torchmetrics' import (with the
torchvision and scipy.signal it pulls in) costs more than a second, and `train` reaches its first step without it."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric, R2Score
from torchmetrics.classification import MulticlassAUROC, MultilabelAveragePrecision


class Fed(Metric):
    """`metric` updated with `inputs(logits, targets)`: a dtype, an activation or a per-image loss first."""

    full_state_update = False

    def __init__(self, metric: Metric, inputs: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]):
        super().__init__()
        self.metric = metric
        self.inputs = inputs  # a function, not a module: a task it closes over is not registered as a child

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.metric.update(*self.inputs(logits, targets))

    def compute(self) -> torch.Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()


class MacroMean(Metric):
    """Mean over classes of torchmetrics' per-class `score` (average=None), skipping the classes the split cannot
    score: torchmetrics scores those 0 with a warning (`unscorable`, silenced here) and averages them in, which a
    small split meets often. Subclasses say what they count per class and which counts can be scored."""

    full_state_update = False
    unscorable = ""  # the message of torchmetrics' warning for a class it cannot score

    def __init__(self, score: Metric, num_classes: int) -> None:
        super().__init__()
        self.score = score
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def inputs(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def count(self, targets: torch.Tensor) -> torch.Tensor:
        """(num_classes,) int64: what decides whether a class can be scored (its images, its positives)."""
        raise NotImplementedError

    def scorable(self) -> torch.Tensor:
        raise NotImplementedError

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.score.update(*self.inputs(logits, targets))
        self.counts += self.count(targets)

    def per_class(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=self.unscorable, category=UserWarning)
            score = self.score.compute().float()
        return torch.where(self.scorable(), score, torch.full_like(score, float("nan")))

    def compute(self) -> torch.Tensor:
        score = self.per_class()
        return score.nanmean() if bool(torch.isfinite(score).any()) else torch.tensor(float("nan"))

    def reset(self) -> None:
        super().reset()
        self.score.reset()


def mean_loss(per_image: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Fed:
    """The mean over a split of a per-image loss `per_image(logits, targets)` -> (B,)."""
    return Fed(MeanMetric(), lambda logits, targets: (per_image(logits, targets),))


class MacroAUROC(MacroMean):
    """Classification: one-vs-rest ROC AUC, averaged over the classes that the split holds, but not alone."""

    unscorable = "No (positive|negative) samples"

    def __init__(self, num_classes: int) -> None:
        super().__init__(MulticlassAUROC(num_classes, average=None), num_classes)

    def inputs(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # probabilities: torchmetrics takes values that all lie in [0, 1] for probabilities and would rank such
        # logits as they are, and a class's logit does not rank images as its softmax probability does
        return logits.float().softmax(-1), targets

    def count(self, targets: torch.Tensor) -> torch.Tensor:
        return torch.bincount(targets, minlength=len(self.counts))

    def scorable(self) -> torch.Tensor:
        return (self.counts > 0) & (self.counts < self.counts.sum())


class MacroAP(MacroMean):
    """Multi-label: per-class AP, averaged over the classes with a positive in the split. VOC's devkit never meets a
    class without one, but a small validation split does, and a class that cannot be scored should not pull the
    mean down. Targets equal to `ignore` count for nothing."""

    unscorable = "No positive samples"

    def __init__(self, num_classes: int, ignore: int) -> None:
        super().__init__(MultilabelAveragePrecision(num_classes, average=None, ignore_index=ignore), num_classes)

    def inputs(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.float(), targets.long()

    def count(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets == 1).sum(0)

    def scorable(self) -> torch.Tensor:
        return self.counts > 0


class MeanBCE(Metric):
    """Multi-label: mean BCE over a split, every (image, class) pair whose target is not `ignore` weighing the same."""

    full_state_update = False

    def __init__(self, ignore: int) -> None:
        super().__init__()
        self.ignore = ignore
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        keep = targets != self.ignore
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float().clamp_min(0), reduction="none")
        self.total += loss[keep].sum().double()
        self.count += keep.sum()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class R2OrNaN(R2Score):
    """Regression: torchmetrics' R², NaN instead of an error on fewer than two values (a one-image validation
    split)."""

    def compute(self) -> torch.Tensor:
        if int(self.total) < 2:
            return torch.tensor(float("nan"))
        return super().compute()


class TaskLoss(Metric):
    """Regression: the training loss `loss(logits, targets)` (standardised units) averaged over a split, for the
    loss curves."""

    full_state_update = False

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.loss = loss  # a function (the task's bound method), not a module: the task is not registered as a child
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.total += self.loss(logits, targets).double() * len(logits)
        self.count += len(logits)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()
