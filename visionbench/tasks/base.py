"""The task interface the engine trains against, and `create_task`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MetricCollection

from visionbench.data.base import DatasetInfo
from visionbench.errors import UserError
from visionbench.registry import TASKS


class Task(nn.Module):
    """Loss, output activation and metrics of one kind of target.

    Attributes:
        main_metric: the metric name that picks the best checkpoint (e.g. `acc1`).
        mode: `max` or `min`: which direction of `main_metric` is better.
    """

    main_metric: str = "loss"
    mode: str = "min"

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns a dict with `loss` (scalar) and `output` (activated predictions), as timm's TrainingTask."""
        return {"loss": self.loss(logits, targets), "output": self.activate(logits)}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def metrics(self) -> MetricCollection:
        """A fresh collection of the scalar metrics reported per split; updated with (logits, targets)."""
        raise NotImplementedError

    def artifacts(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Non-scalar results saved with the run (confusion matrix, ...), from a whole split's outputs."""
        return {}


def create_task(name: str, info: DatasetInfo, **kwargs) -> Task:
    if name != info.task:
        raise UserError(f"task.name={name!r} does not fit dataset {info.name!r}, whose targets are for {info.task!r}")
    return TASKS.get(name)(info, **kwargs)
