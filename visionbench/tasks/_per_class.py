"""Per-class results of a whole split, for the run directory and summary.json: precision, recall, F1 and support
per class (single- and multi-label), the most-confused pairs of a confusion matrix, and regression's error by range
of the true target.

The scores are torchmetrics' (`average=None`). torchmetrics scores a class 0 where its ratio is 0 / 0 (`zero_division`);
here such a score is None, "undefined", not a bad score: precision of a class never predicted, recall of a class
absent from the split, F1 of a class neither present nor predicted.
"""

from __future__ import annotations

import math
from typing import Any

import torch

MOST_CONFUSED = 10  # pairs listed: the head of the off-diagonal counts, which on 10 classes holds the usual suspects
# Quantile bins of the true target for the error by range: each holds a fifth of the split, so that each bin's MAE
# rests on as many images as the next one's and a skewed target (a log-mass) still gets a bin in its tail
RANGE_BINS = 5


def multiclass_table(preds: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per class (in `names` order): precision, recall, F1 and support of (N,) predicted and true class indices."""
    from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall

    C = len(names)
    preds, targets = preds.long(), targets.long()
    scores = {
        "precision": MulticlassPrecision(C, average=None)(preds, targets),
        "recall": MulticlassRecall(C, average=None)(preds, targets),
        "f1": MulticlassF1Score(C, average=None)(preds, targets),
    }
    support = torch.bincount(targets, minlength=C)
    predicted = torch.bincount(preds, minlength=C)
    return _table(names, scores, support, predicted)


def multilabel_table(
    probs: torch.Tensor, targets: torch.Tensor, threshold: float, names: list[str], ignore: int
) -> dict[str, dict[str, Any]]:
    """Per label: precision, recall and F1 of the decisions `probs > threshold`, and support (positives), over
    the (image, label) pairs whose target is not `ignore`. `probs` are probabilities (torchmetrics would take values
    that all lie in [0, 1] for probabilities, logits or not)."""
    from torchmetrics.classification import MultilabelF1Score, MultilabelPrecision, MultilabelRecall

    C = len(names)
    targets = targets.long()
    kwargs = {"threshold": threshold, "average": None, "ignore_index": ignore}
    scores = {
        "precision": MultilabelPrecision(C, **kwargs)(probs.float(), targets),
        "recall": MultilabelRecall(C, **kwargs)(probs.float(), targets),
        "f1": MultilabelF1Score(C, **kwargs)(probs.float(), targets),
    }
    keep = targets != ignore
    support = ((targets == 1) & keep).sum(0)
    predicted = ((probs.double() > threshold) & keep).sum(0)
    return _table(names, scores, support, predicted)


def _table(
    names: list[str], scores: dict[str, torch.Tensor], support: torch.Tensor, predicted: torch.Tensor
) -> dict[str, dict[str, Any]]:
    defined = {"precision": predicted > 0, "recall": support > 0, "f1": (predicted > 0) | (support > 0)}
    table = {}
    for i, name in enumerate(names):
        row = {k: round(float(v[i]), 6) if defined[k][i] else None for k, v in scores.items()}
        table[name] = {**row, "support": int(support[i])}
    return table


def table_columns(table: dict[str, dict[str, Any]], first: str = "class") -> dict[str, list]:
    """A per-class table as equal-length columns (the run directory's CSV): `first`, then each score."""
    keys = list(next(iter(table.values()))) if table else []
    return {first: list(table), **{k: [row[k] for row in table.values()] for k in keys}}


def most_confused(matrix: torch.Tensor, names: list[str], k: int = MOST_CONFUSED) -> list[dict[str, Any]]:
    """The `k` largest off-diagonal cells of a (C, C) confusion matrix (rows true, columns predicted), largest
    first (ties: in row, then column order), each with its share of the true class's images; empty cells left out."""
    counts = matrix.long().clone()
    counts.fill_diagonal_(0)
    flat = counts.flatten()
    order = sorted(flat.nonzero().flatten().tolist(), key=lambda i: (-int(flat[i]), i))[:k]
    rows = matrix.long().sum(1)
    C = len(names)
    return [
        {
            "true": names[i // C],
            "predicted": names[i % C],
            "count": int(flat[i]),
            "share_of_true": round(int(flat[i]) / int(rows[i // C]), 6),
        }
        for i in order
    ]


def error_by_range(preds: torch.Tensor, targets: torch.Tensor, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per target column: the MAE in each quantile bin of the true target, each bin [low, high) but the last
    [low, high]; (N, T) predictions and targets in target units. `RANGE_BINS` bins, fewer where ties merge bin edges
    or the split is small (at most N - 1: more would leave a bin between two neighbouring values empty)."""
    from torchmetrics.functional import mean_absolute_error

    preds, targets = preds.double().reshape(len(preds), -1), targets.double().reshape(len(targets), -1)
    result = {}
    for j, name in enumerate(names):
        y, p = targets[:, j].contiguous(), preds[:, j].contiguous()
        if not len(y):
            result[name] = []
            continue
        n_bins = min(RANGE_BINS, max(len(y) - 1, 1))
        edges = torch.unique(torch.quantile(y, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)))
        index = torch.bucketize(y, edges[1:-1], right=True)  # edges[i] <= y < edges[i + 1]
        bins = []
        for b in range(max(len(edges) - 1, 1)):
            sel = index == b
            low, high = float(edges[b]), float(edges[min(b + 1, len(edges) - 1)])
            mae = float(mean_absolute_error(p[sel], y[sel]))
            bins.append({"low": _num(low), "high": _num(high), "count": int(sel.sum()), "mae": _num(mae)})
        result[name] = bins
    return result


def range_columns(ranges: dict[str, list[dict[str, Any]]]) -> dict[str, list]:
    """`error_by_range`'s bins as equal-length columns, one row per (target, bin)."""
    rows = [{"target": name, **b} for name, bins in ranges.items() for b in bins]
    keys = ("target", "low", "high", "count", "mae")
    return {k: [row[k] for row in rows] for k in keys}


def _num(value: float) -> float | None:
    """Seven significant digits (a target in 1e-12 units keeps its digits); None for NaN."""
    return float(f"{value:.7g}") if math.isfinite(value) else None
