"""Single-label classification: cross-entropy with label smoothing, top-1/top-5 accuracy, confusion matrix,
per-class precision, recall and F1 with the most-confused pairs, calibration (top-label ECE, Brier score), and
optionally one-vs-rest ROC AUC (the DeepLense classification metric)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from visionbench import layout
from visionbench.data.base import DatasetInfo
from visionbench.registry import TASKS
from visionbench.tasks._per_class import most_confused, multiclass_table, table_columns
from visionbench.tasks.base import Task

if TYPE_CHECKING:  # torchmetrics is imported where metrics are built: `train` reaches its first step without it
    from torchmetrics import MetricCollection
from visionbench.tasks.calibration import multiclass_calibration


class ClassificationTask(Task):
    name = "classification"
    main_metric = "acc1"
    mode = "max"
    one_class_per_image = True
    columns = ("rank", "class", "probability")
    calibratable = True

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
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        from visionbench.tasks._metrics import MacroAUROC, mean_loss

        metrics = {
            "acc1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
            # unsmoothed, so values compare across label_smoothing settings
            "loss": mean_loss(lambda logits, targets: F.cross_entropy(logits.float(), targets, reduction="none")),
        }
        if self.num_classes > 5:
            metrics["acc5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        if self.auroc:
            metrics["auroc"] = MacroAUROC(self.num_classes)
        return MetricCollection(metrics)

    def nll(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

    def calibration(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        logits, targets = logits.cpu(), targets.cpu()
        return multiclass_calibration(self.activate(logits), targets)

    def _confusion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from torchmetrics.classification import MulticlassConfusionMatrix

        return MulticlassConfusionMatrix(self.num_classes)(logits.float().argmax(-1), targets)

    def artifacts(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        logits, targets = logits.cpu(), targets.cpu()  # the metrics below are built on the CPU
        names = list(self.class_names)
        matrix = self._confusion(logits, targets)
        return {
            layout.CONFUSION_MATRIX: {"class_names": names, "rows_true_cols_pred": matrix.tolist()},
            layout.PER_CLASS: table_columns(multiclass_table(logits.argmax(-1), targets, names)),
            **({layout.RELIABILITY: calibration} if (calibration := self.calibration(logits, targets)) else {}),
        }

    def details(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """`per_class` (precision, recall, F1, support), `most_confused` (true, predicted, count), `calibration`
        (ECE, Brier) and, with `auroc`, `per_class_auroc`."""
        logits, targets = logits.cpu(), targets.cpu()  # the metrics below are built on the CPU
        names = list(self.class_names)
        calibration = {k: v for k, v in self.calibration(logits, targets).items() if k != "bins"}
        details = {
            "per_class": multiclass_table(logits.argmax(-1), targets, names),
            "most_confused": most_confused(self._confusion(logits, targets), names),
            **({"calibration": calibration} if calibration else {}),
        }
        if not self.auroc:
            return details
        from visionbench.tasks._metrics import MacroAUROC

        metric = MacroAUROC(self.num_classes)
        metric.update(logits, targets)
        per_class = [None if v != v else round(v, 6) for v in metric.per_class().tolist()]  # NaN -> None
        return {**details, "per_class_auroc": dict(zip(self.class_names, per_class, strict=True))}

    def decide(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(-1)

    def describe(self, output: torch.Tensor, top_k: int) -> dict[str, Any]:
        """The `top_k` most probable classes, most probable first."""
        values, indices = output.topk(min(top_k, output.shape[-1]))
        ranked = [
            {"label": self.class_names[i], "index": i, "probability": p}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        return {"predictions": ranked}

    def cells(self, rank: int, prediction: dict[str, Any]) -> list[str]:
        return [str(rank + 1), prediction["label"], f"{prediction['probability']:.4f}"]

    def explain_targets(
        self, outputs: torch.Tensor, targets: torch.Tensor, n: int, classes: list[str] | None, predicted: bool
    ) -> dict[str, list[tuple[int, int, str]]]:
        """`correct` and `wrong` predictions, or the images of each class in `classes` (`class-<name>`)."""
        names = self.class_names
        pred, true = self.decide(outputs), targets.long()

        def panel(i: int) -> tuple[int, int, str]:
            return i, int(pred[i] if predicted else true[i]), f"#{i} true {names[true[i]]}, pred {names[pred[i]]}"

        def first(mask: torch.Tensor) -> list[tuple[int, int, str]]:
            return [panel(i) for i in mask.nonzero().flatten()[:n].tolist()]

        if classes:
            return {f"class-{c}": first(true == names.index(c)) for c in classes}
        return {"correct": first(pred == true), "wrong": first(pred != true)}


@TASKS.register(ClassificationTask.name)
def classification(info: DatasetInfo, label_smoothing: float = 0.0, auroc: bool = False) -> ClassificationTask:
    return ClassificationTask(info, label_smoothing=label_smoothing, auroc=auroc)
