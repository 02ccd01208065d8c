"""Single-label classification: cross-entropy with label smoothing, top-1/top-5 accuracy, confusion matrix, and
optionally one-vs-rest ROC AUC (the DeepLense classification metric)."""

from __future__ import annotations

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


class ClassificationTask(Task):
    main_metric = "acc1"
    mode = "max"

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
            metrics["auroc"] = MulticlassAUROC(self.num_classes, average="macro")
        return MetricCollection(metrics)

    def artifacts(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        matrix = MulticlassConfusionMatrix(self.num_classes)(logits.float().argmax(-1), targets)
        return {"confusion_matrix": {"class_names": list(self.class_names), "rows_true_cols_pred": matrix.tolist()}}

    def details(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        if not self.auroc:
            return {}
        per_class = MulticlassAUROC(self.num_classes, average=None)(logits.float(), targets)
        return {"per_class_auroc": {n: round(float(v), 6) for n, v in zip(self.class_names, per_class, strict=True)}}


@TASKS.register("classification")
def classification(info: DatasetInfo, label_smoothing: float = 0.0, auroc: bool = False) -> ClassificationTask:
    return ClassificationTask(info, label_smoothing=label_smoothing, auroc=auroc)
