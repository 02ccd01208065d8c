"""The task interface the engine trains against, and `create_task`."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from visionbench.data.base import DatasetInfo
from visionbench.errors import UserError
from visionbench.registry import TASKS

if TYPE_CHECKING:  # torchmetrics is imported where metrics are built (tasks/_metrics.py says why)
    from torchmetrics import MetricCollection


class Task(nn.Module):
    """Loss, output activation and metrics of one kind of target, and what its outputs say: the decision every
    consumer takes from them (`decide`), how predict reports them, what explain attributes.

    Attributes:
        name: the task's registry key, as summaries, exports and predict's JSON name it.
        main_metric: the metric name that picks the best checkpoint (e.g. `acc1`).
        mode: `max` or `min`: which direction of `main_metric` is better.
        one_class_per_image: a target is one class index per image: mixup / cutmix can blend its one-hot form, and
            embeddings can be coloured by it.
        columns: the columns of predict's table for one entry of `describe`'s predictions.
        calibratable: the outputs are probabilities of logits (softmax, sigmoid): ECE, the Brier score and
            temperature scaling apply (`calibration`, `nll`).
    """

    name: str = ""
    main_metric: str = "loss"
    mode: str = "min"
    one_class_per_image: bool = False
    columns: tuple[str, ...] = ()
    calibratable: bool = False

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

    def train_metrics(self) -> MetricCollection:
        """The metrics measured on the training batches as they pass (metrics.csv's `train/<name>`, engine/meter.py):
        the main metric, as `metrics()` builds it for val and test, so that the train and val columns share one
        definition. Updated with (logits, targets) chunks of many batches."""
        from torchmetrics import MetricCollection

        return MetricCollection({self.main_metric: self.metrics()[self.main_metric]})

    def artifacts(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Non-scalar results saved with the run (confusion matrix, predictions ...), from a whole split's outputs.

        Each becomes `<name>_test.json`, or `<name>_test.csv` when the value is a dict of equal-length columns.
        """
        return {}

    def details(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """Small per-class results that belong in summary.json (per-class AP, per-class AUC ...)."""
        return {}

    def nll(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the targets under `activate(logits)`, differentiable in the logits and in
        their dtype: what temperature scaling minimises (tasks that are `calibratable`)."""
        raise NotImplementedError

    def calibration(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """`ece`, `brier`, `ece_kind` (what the ECE bins) and the reliability diagram's `bins` of a whole split's
        outputs (tasks/calibration.py); empty for tasks that are not `calibratable`."""
        return {}

    def fit_targets(self, targets: torch.Tensor) -> None:
        """Look at the training targets once before training (regression standardises with their statistics)."""

    def stats(self) -> dict[str, Any]:
        """What the task learned from the data (`fit_targets`), saved with the run; empty for most tasks."""
        return {}

    def load_stats(self, stats: dict[str, Any]) -> None:
        """Restore what `stats` returned (evaluating or predicting with a finished run)."""

    def decide(self, outputs: torch.Tensor) -> torch.Tensor:
        """What the model says of each image, from a batch of activated outputs (`activate`): a class index, the
        labels that are positive, or the values themselves. predict, analyze and explain all decide here."""
        return outputs

    def agreement(self, before: torch.Tensor, after: torch.Tensor) -> tuple[float, str]:
        """How far two decisions on the same images agree (analyze's consistency): the value and what it
        measures; by default the fraction of images whose decision is unchanged."""
        same = (before == after).reshape(len(before), -1).all(1)
        return float(same.float().mean()), "unchanged"

    def describe(self, output: torch.Tensor, top_k: int) -> dict[str, Any]:
        """One image's activated output as predict reports it: `predictions`, one entry per table row."""
        raise NotImplementedError

    def cells(self, rank: int, prediction: dict[str, Any]) -> list[str]:
        """The table cells (under `columns`) of the `rank`-th entry of `describe`'s predictions."""
        raise NotImplementedError

    def explain_targets(
        self, outputs: torch.Tensor, targets: torch.Tensor, n: int, classes: list[str] | None, predicted: bool
    ) -> dict[str, list[tuple[int, int, str]]]:
        """The images and outputs explain attributes, in named groups of at most `n` (index in the split, output,
        caption), from a split's activated outputs and targets; `classes`: only images (or labels) of these
        classes; `predicted`: the predicted output rather than the true one."""
        raise NotImplementedError


def create_task(name: str, info: DatasetInfo, **kwargs) -> Task:
    if name != info.task:
        raise UserError(f"task.name={name!r} does not fit dataset {info.name!r}, whose targets are for {info.task!r}")
    return TASKS.get(name)(info, **kwargs)


def build_task(cfg, info: DatasetInfo) -> Task:
    """The task of a TaskConfig for a dataset. Keys the task does not use must keep their defaults, so that, say,
    `task.pos_weight` on a classification run is an error instead of a silently ignored setting."""
    name = cfg.name or info.task
    accepted = inspect.signature(TASKS.get(name)).parameters
    kwargs = {}
    for key, field in type(cfg).model_fields.items():
        value = getattr(cfg, key)
        if key == "name":
            continue
        if key in accepted:
            kwargs[key] = value
        elif value != field.get_default(call_default_factory=True):
            raise UserError(f"task.{key} does not apply to the {name} task (dataset {info.name!r})")
    return create_task(name, info, **kwargs)
