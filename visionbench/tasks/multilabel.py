"""Multi-label classification: one sigmoid per class, BCE-with-logits, mAP, per-class AP, precision, recall and F1
at the task's threshold, and calibration (binary ECE over all labels, Brier score).

Targets are float (B, C): 1 present, 0 absent, -1 ignore. Pascal VOC marks objects that are hard to recognise as
`difficult`; its evaluation neither rewards nor penalises them, so a class present in an image only through
difficult objects is -1 there and drops out of the loss and of every metric for that image and class
(torchmetrics' `ignore_index`). AP is torchmetrics' step-wise area under the precision-recall curve, the
definition VOC adopted from 2010 on (not the 11-point interpolation of VOC2007's devkit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from visionbench import layout
from visionbench.data.base import DatasetInfo
from visionbench.errors import UserError
from visionbench.registry import TASKS
from visionbench.tasks._per_class import multilabel_table, table_columns
from visionbench.tasks.base import Task
from visionbench.tasks.calibration import multilabel_calibration

if TYPE_CHECKING:  # torchmetrics is imported where metrics are built (start-up)
    from torchmetrics import MetricCollection

IGNORE = -1


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits over the (image, class) pairs whose target is not IGNORE."""
    keep = (targets != IGNORE).float()
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float().clamp_min(0), pos_weight=pos_weight, reduction="none"
    )
    return (loss * keep).sum() / keep.sum().clamp_min(1)


class MultilabelTask(Task):
    name = "multilabel"
    main_metric = "map"
    mode = "max"
    columns = ("label", "probability", "positive")
    calibratable = True

    def __init__(self, info: DatasetInfo, pos_weight: float | list[float] | None = None, threshold: float = 0.5):
        super().__init__()
        self.num_classes = info.num_outputs
        self.class_names = info.class_names
        self.threshold = threshold
        if isinstance(pos_weight, list) and len(pos_weight) != self.num_classes:
            raise UserError(
                f"task.pos_weight: expected one value or {self.num_classes} (one per class), got {len(pos_weight)}"
            )
        weight = (
            None
            if pos_weight is None
            else torch.as_tensor(pos_weight, dtype=torch.float32).expand(self.num_classes).clone()
        )
        self.register_buffer("pos_weight", weight, persistent=False)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return masked_bce(logits, targets, self.pos_weight)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def metrics(self) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MultilabelF1Score

        from visionbench.tasks._metrics import Fed, MacroAP, MeanBCE

        n = self.num_classes
        f1 = MultilabelF1Score(n, self.threshold, average="macro", ignore_index=IGNORE)
        # torchmetrics' multilabel metrics want integer targets (ours are float) and get probabilities: torchmetrics
        # takes a batch whose values all lie in [0, 1] for probabilities, so logits that happen to would be
        # thresholded as they are (a logit of 0.3 counted negative at threshold 0.5)
        return MetricCollection(
            {
                "map": MacroAP(n, IGNORE),
                "f1": Fed(f1, lambda logits, targets: (logits.float().sigmoid(), targets.long())),
                "loss": MeanBCE(IGNORE),
            }
        )

    def nll(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets != IGNORE
        loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype).clamp_min(0), reduction="none")
        return loss[keep].mean()

    def calibration(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        logits, targets = logits.cpu(), targets.cpu()
        return multilabel_calibration(self.activate(logits), targets, IGNORE)

    def _per_class(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, dict[str, Any]]:
        return multilabel_table(self.activate(logits), targets, self.threshold, list(self.class_names), IGNORE)

    def artifacts(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        logits, targets = logits.cpu(), targets.cpu()  # the metrics below are built on the CPU
        calibration = self.calibration(logits, targets)
        return {
            layout.PER_CLASS: table_columns(self._per_class(logits, targets), first="label"),
            **({layout.RELIABILITY: calibration} if calibration else {}),
        }

    def details(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """`per_class_ap`, `per_class` (precision, recall, F1 at `threshold`, support: positives), `threshold`
        and `calibration` (ECE, Brier)."""
        logits, targets = logits.cpu(), targets.cpu()  # the metrics below are built on the CPU
        from visionbench.tasks._metrics import MacroAP

        metric = MacroAP(self.num_classes, IGNORE)
        metric.update(logits, targets)
        calibration = {k: v for k, v in self.calibration(logits, targets).items() if k != "bins"}
        # JSON has no NaN: a class without positives in the split has no AP (None)
        return {
            "per_class_ap": {
                n: (round(float(v), 6) if torch.isfinite(v) else None)
                for n, v in zip(self.class_names, metric.per_class(), strict=True)
            },
            "per_class": self._per_class(logits, targets),
            "threshold": self.threshold,
            **({"calibration": calibration} if calibration else {}),
        }

    def decide(self, outputs: torch.Tensor) -> torch.Tensor:
        """The positive labels: probability over `threshold`, as the F1 metric counts them. In float64, so that a
        probability is compared with the threshold as written (0.3, not float32's 0.30000001)."""
        return outputs.double() > self.threshold

    def describe(self, output: torch.Tensor, top_k: int) -> dict[str, Any]:
        """Every label's probability and whether it is positive (`top_k` does not apply)."""
        labels = [
            {"label": name, "index": i, "probability": p, "positive": positive}
            for i, (name, p, positive) in enumerate(
                zip(self.class_names, output.tolist(), self.decide(output).tolist(), strict=True)
            )
        ]
        return {"threshold": self.threshold, "predictions": labels}

    def cells(self, rank: int, prediction: dict[str, Any]) -> list[str]:
        return [prediction["label"], f"{prediction['probability']:.4f}", "yes" if prediction["positive"] else ""]

    def explain_targets(
        self, outputs: torch.Tensor, targets: torch.Tensor, n: int, classes: list[str] | None, predicted: bool
    ) -> dict[str, list[tuple[int, int, str]]]:
        """`labels`: one panel per image and label that is true (or, `predicted`, true or predicted positive)."""
        names = self.class_names
        true, positive = targets > 0.5, self.decide(outputs)
        panels = []
        for i in range(len(outputs)):
            labels = (positive[i] | true[i]) if predicted else true[i]
            for j in labels.nonzero().flatten().tolist():
                if classes and names[j] not in classes:
                    continue
                mark = "true" if true[i, j] else "false"
                panels.append((i, j, f"#{i} {names[j]} ({mark} label, p={float(outputs[i, j]):.2f})"))
            if len(panels) >= n:
                break
        return {"labels": panels[:n]}


@TASKS.register(MultilabelTask.name)
def multilabel(info: DatasetInfo, pos_weight: float | list[float] | None = None, threshold: float = 0.5) -> Task:
    return MultilabelTask(info, pos_weight=pos_weight, threshold=threshold)
