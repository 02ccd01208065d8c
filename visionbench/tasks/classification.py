"""Single-label classification: cross-entropy with label smoothing, top-1/top-5 accuracy, confusion matrix, and
optionally one-vs-rest ROC AUC (the DeepLense classification metric)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassConfusionMatrix

from visionbench.data.base import DatasetInfo
from visionbench.registry import TASKS
from visionbench.tasks.base import Task


class _MeanLoss(Metric):
    """Mean cross-entropy over a split (unsmoothed, so values compare across label_smoothing settings)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.mean = MeanMetric()

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.mean.update(F.cross_entropy(logits.float(), targets, reduction="none"))

    def compute(self) -> torch.Tensor:
        return self.mean.compute()

    def reset(self) -> None:
        super().reset()
        self.mean.reset()


class _MacroAUROC(Metric):
    """Mean over classes of torchmetrics' one-vs-rest ROC AUC, skipping classes that the split lacks (or holds
    alone): torchmetrics scores those 0 with a warning and averages them in, which a small split meets often."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.auroc = MulticlassAUROC(num_classes, average=None)
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.auroc.update(logits.float(), targets)
        self.counts += torch.bincount(targets, minlength=len(self.counts))

    def per_class(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No (positive|negative) samples", category=UserWarning)
            auroc = self.auroc.compute().float()
        scorable = (self.counts > 0) & (self.counts < self.counts.sum())
        return torch.where(scorable, auroc, torch.full_like(auroc, float("nan")))

    def compute(self) -> torch.Tensor:
        auroc = self.per_class()
        return auroc.nanmean() if bool(torch.isfinite(auroc).any()) else torch.tensor(float("nan"))

    def reset(self) -> None:
        super().reset()
        self.auroc.reset()


class ClassificationTask(Task):
    main_metric = "acc1"
    mode = "max"
    mixes_images = True

    def __init__(self, info: DatasetInfo, label_smoothing: float = 0.0, auroc: bool = False):
        super().__init__()
        self.num_classes = info.num_outputs
        self.class_names = info.class_names
        self.label_smoothing = label_smoothing
        self.auroc = auroc

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)

    def metrics(self) -> MetricCollection:
        # micro average = the fraction of images classified correctly, the number papers quote
        metrics: dict[str, Metric] = {
            "acc1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
            "loss": _MeanLoss(),
        }
        if self.num_classes > 5:
            metrics["acc5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        if self.auroc:
            metrics["auroc"] = _MacroAUROC(self.num_classes)
        return MetricCollection(metrics)

    def artifacts(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        matrix = MulticlassConfusionMatrix(self.num_classes)(logits.float().argmax(-1), targets)
        return {"confusion_matrix": {"class_names": list(self.class_names), "rows_true_cols_pred": matrix.tolist()}}

    def details(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        if not self.auroc:
            return {}
        metric = _MacroAUROC(self.num_classes)
        metric.update(logits, targets)
        per_class = [None if v != v else round(v, 6) for v in metric.per_class().tolist()]  # NaN -> None
        return {"per_class_auroc": dict(zip(self.class_names, per_class, strict=True))}


@TASKS.register("classification")
def classification(info: DatasetInfo, label_smoothing: float = 0.0, auroc: bool = False) -> ClassificationTask:
    return ClassificationTask(info, label_smoothing=label_smoothing, auroc=auroc)
