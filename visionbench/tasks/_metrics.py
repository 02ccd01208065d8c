"""Metric machinery the tasks share: a stock torchmetrics metric fed what a task's outputs need first (`Fed`), and
the macro mean of a per-class score over the classes a split can score (`MacroMean`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torchmetrics import Metric


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
