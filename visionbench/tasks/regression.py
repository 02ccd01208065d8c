"""Regression: L1, MSE, RMSE or Huber loss on standardised targets; MAE, RMSE and R² in the targets' own units, and
the MAE by range of the true target (quantile bins).

The network learns z = (y - mean) / std, with mean and std of the train split (`fit_targets`), so a target in
dex around -23 (DeepLense's log10 m_a) or in metres trains at the same learning rates as one around zero. The
statistics are saved with the run (summary.json, checkpoints) and undone by `activate`, so every reported number
and every prediction is in the original units.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from visionbench import layout
from visionbench.data.base import DatasetInfo
from visionbench.registry import TASKS
from visionbench.tasks._per_class import error_by_range, range_columns
from visionbench.tasks.base import Task

if TYPE_CHECKING:  # torchmetrics is imported where metrics are built (start-up)
    from torchmetrics import MetricCollection


class RegressionTask(Task):
    name = "regression"
    main_metric = "mae"
    mode = "min"
    columns = ("target", "value")

    def __init__(
        self, info: DatasetInfo, loss: str = "l1", huber_delta: float = 1.0, standardize_targets: bool = True
    ) -> None:
        super().__init__()
        self.num_outputs = info.num_outputs
        self.target_names = info.class_names
        self.loss_name, self.huber_delta, self.standardize = loss, huber_delta, standardize_targets
        self.register_buffer("target_mean", torch.zeros(self.num_outputs))
        self.register_buffer("target_std", torch.ones(self.num_outputs))

    def fit_targets(self, targets: torch.Tensor) -> None:
        if not self.standardize:
            return
        y = targets.reshape(len(targets), -1).double()
        self.target_mean.copy_(y.mean(0))
        self.target_std.copy_(y.std(0).nan_to_num(1.0).clamp_min(1e-8) if len(y) > 1 else torch.ones(y.shape[1]))

    def stats(self) -> dict[str, Any]:
        return {"target_mean": self.target_mean.tolist(), "target_std": self.target_std.tolist()}

    def load_stats(self, stats: dict[str, Any]) -> None:
        self.target_mean.copy_(torch.as_tensor(stats["target_mean"]))
        self.target_std.copy_(torch.as_tensor(stats["target_std"]))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = (targets.reshape(logits.shape).float() - self.target_mean) / self.target_std
        pred = logits.float()
        if self.loss_name == "l1":
            return F.l1_loss(pred, z)
        if self.loss_name == "mse":
            return F.mse_loss(pred, z)
        if self.loss_name == "rmse":  # the DeepLense study's loss; the floor keeps the gradient finite at zero error
            return F.mse_loss(pred, z).clamp_min(1e-12).sqrt()
        return F.huber_loss(pred, z, delta=self.huber_delta)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float() * self.target_std + self.target_mean

    def metrics(self) -> MetricCollection:
        from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

        from visionbench.tasks._metrics import Fed, R2OrNaN, TaskLoss

        def on_predictions(metric):  # fed the de-standardised predictions, flattened over outputs
            return Fed(metric, lambda logits, targets: (self.activate(logits).reshape(-1), targets.reshape(-1).float()))

        return MetricCollection(
            {
                "mae": on_predictions(MeanAbsoluteError()),
                "rmse": on_predictions(MeanSquaredError(squared=False)),
                "r2": on_predictions(R2OrNaN()),
                "loss": TaskLoss(self.loss),
            }
        )

    def artifacts(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        preds = self.activate(logits).cpu()
        targets = targets.reshape(preds.shape).cpu()
        columns: dict[str, list[float]] = {}
        for j, name in enumerate(self.target_names):
            suffix = "" if self.num_outputs == 1 else f"_{name}"
            columns[f"true{suffix}"] = [round(v, 6) for v in targets[:, j].tolist()]
            columns[f"pred{suffix}"] = [round(v, 6) for v in preds[:, j].tolist()]
        ranges = error_by_range(preds, targets, list(self.target_names))
        return {layout.PREDICTIONS: columns, layout.ERROR_BY_RANGE: range_columns(ranges)}

    def details(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        """`error_by_range`: per target, the MAE in each quantile bin of the true values (low, high, count)."""
        preds = self.activate(logits).cpu()
        return {"error_by_range": error_by_range(preds, targets.reshape(preds.shape).cpu(), list(self.target_names))}

    def agreement(self, before: torch.Tensor, after: torch.Tensor) -> tuple[float, str]:
        return float((after - before).abs().mean()), "mean |change|"

    def describe(self, output: torch.Tensor, top_k: int) -> dict[str, Any]:
        """Every target's value, in its own units."""
        values = [
            {"label": name, "index": i, "value": v}
            for i, (name, v) in enumerate(zip(self.target_names, output.tolist(), strict=True))
        ]
        return {"predictions": values}

    def cells(self, rank: int, prediction: dict[str, Any]) -> list[str]:
        return [prediction["label"], f"{prediction['value']:.6g}"]

    def explain_targets(
        self, outputs: torch.Tensor, targets: torch.Tensor, n: int, classes: list[str] | None, predicted: bool
    ) -> dict[str, list[tuple[int, int, str]]]:
        """`samples`: the first `n` images, output 0 (the first target) attributed, true and predicted values."""
        panels = []
        for i in range(min(n, len(outputs))):
            true, pred = float(targets[i].reshape(-1)[0]), float(outputs[i].reshape(-1)[0])
            panels.append((i, 0, f"#{i} true {true:.3g}, pred {pred:.3g}"))
        return {"samples": panels}


@TASKS.register(RegressionTask.name)
def regression(
    info: DatasetInfo, loss: str = "l1", huber_delta: float = 1.0, standardize_targets: bool = True
) -> RegressionTask:
    return RegressionTask(info, loss=loss, huber_delta=huber_delta, standardize_targets=standardize_targets)
