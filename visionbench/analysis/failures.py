"""`analyze --suite failures`: a run's most confident wrong decisions on a split, as a table (`analysis/failures.csv`)
and an image grid of the same rows (`analysis/failures.png`, which the run's report shows).

What is wrong, and how confident it was, follows the task's own decision (`Task.decide`), whose form tells the
kind of output apart without naming it:
- a class index per image (classification): each image whose predicted class is not its true one, ranked by the
  probability of the predicted class;
- the positive labels (multi-label): each (image, label) decision that disagrees with the label's truth, ranked by
  the probability of the decision taken (p for a false positive, 1 - p for a false negative, so that the threshold
  does not rank them); ignored labels (-1, VOC's difficult objects) are left out as every metric leaves them out,
  and an image with several wrong labels has one panel per label;
- values (regression): each (image, target), ranked by the absolute error in the target's units.

Ties keep the split's order. Each row holds the image's index in the split, the truth, the decision and its
probability (or error); a panel's title says the same.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from visionbench.tasks.multilabel import IGNORE  # a target that no metric counts

TOP_K = 24  # panels of the grid: three rows of eight
GRID_COLUMNS = 8


@dataclasses.dataclass
class Failures:
    """The ranked rows (table columns in `columns`, even when there is no row) and a title for each panel."""

    columns: list[str]
    rows: list[dict]
    captions: list[str]
    what: str  # what the ranking is by, for the figure's title


def rank(task, outputs: torch.Tensor, targets: torch.Tensor, names: tuple[str, ...], k: int) -> Failures:
    """The `k` most confident wrong decisions of a split's activated `outputs`, most confident first.

    Args:
        task: the run's task; its `decide` gives the decisions.
        outputs: (N, ...) activated outputs (probabilities, or values in target units).
        targets: the split's targets, as its loader gives them.
        names: the run's class (or target) names.
        k: rows at most.
    """
    decision = task.decide(outputs)
    if decision.dtype == torch.bool:
        return _wrong_labels(outputs.float(), targets, decision, names, k)
    if decision.is_floating_point():
        return _largest_errors(decision.reshape(len(decision), -1), targets, names, k)
    return _wrong_classes(outputs.float(), targets.long(), decision, names, k)


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Positions of the `k` largest scores, ties in their order in `scores`."""
    return scores.sort(descending=True, stable=True).indices[:k].tolist()


def _wrong_classes(probs: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, names, k: int) -> Failures:
    wrong = (pred != true).nonzero().flatten()
    confidence = probs.gather(1, pred[:, None])[:, 0]
    rows, captions = [], []
    for i in wrong[_top(confidence[wrong], k)].tolist():
        p = float(confidence[i])
        rows.append({"index": i, "true": names[true[i]], "predicted": names[pred[i]], "probability": p})
        captions.append(f"#{i}\ntrue {names[true[i]]}\npred {names[pred[i]]} ({p:.2f})")
    return Failures(["index", "true", "predicted", "probability"], rows, captions, "probability of the prediction")


def _wrong_labels(probs: torch.Tensor, targets: torch.Tensor, positive: torch.Tensor, names, k: int) -> Failures:
    present = targets > 0.5
    images, labels = ((positive != present) & (targets != IGNORE)).nonzero(as_tuple=True)  # image-major order
    confidence = torch.where(positive, probs, 1 - probs)[images, labels]
    word = {True: "present", False: "absent"}
    rows, captions = [], []
    for j in _top(confidence, k):
        i, c = int(images[j]), int(labels[j])
        p, decided = float(probs[i, c]), bool(positive[i, c])
        rows.append(
            {
                "index": i,
                "label": names[c],
                "true": word[not decided],  # wrong: the truth is the other one
                "predicted": word[decided],
                "probability": p,
                "confidence": float(confidence[j]),
            }
        )
        captions.append(f"#{i} {names[c]}\ntrue {word[not decided]}\npred {word[decided]} (p={p:.2f})")
    columns = ["index", "label", "true", "predicted", "probability", "confidence"]
    return Failures(columns, rows, captions, "probability of the wrong decision")


def _largest_errors(preds: torch.Tensor, targets: torch.Tensor, names, k: int) -> Failures:
    true = targets.reshape(preds.shape).to(preds.dtype)
    errors = (preds - true).abs()  # (N, T)
    T = errors.shape[1]
    rows, captions = [], []
    for j in _top(errors.flatten(), k):
        i, t = divmod(j, T)
        row = {"index": i, "target": names[t], "true": float(true[i, t]), "predicted": float(preds[i, t])}
        rows.append({**row, "abs_error": float(errors[i, t])})
        target = f" {names[t]}" if T > 1 else ""
        captions.append(f"#{i}{target}\ntrue {row['true']:.4g}\npred {row['predicted']:.4g}")
    return Failures(["index", "target", "true", "predicted", "abs_error"], rows, captions, "absolute error")


def draw(path: Path, display: torch.Tensor, failures: Failures, title: str) -> Path:
    """The grid of `failures`' images (`display`: the split's images as figures show them), each titled with its
    row, `GRID_COLUMNS` a row; a short figure that says so when there is no wrong decision (so that an older grid
    is replaced, not left in the report)."""
    from visionbench.report.plots import _pyplot, _save

    plt = _pyplot()
    n = len(failures.rows)
    if not n:
        fig, ax = plt.subplots(figsize=(5, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no wrong decisions", ha="center", va="center")
        ax.set_title(title, fontsize=9)
        return _save(fig, path)
    cols = min(GRID_COLUMNS, n)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(1.9 * cols, 2.4 * math.ceil(n / cols)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, caption in zip(axes.flat, failures.rows, failures.captions, strict=False):
        image = display[row["index"]]
        grey = image.shape[0] == 1
        ax.imshow((image[0] if grey else image.permute(1, 2, 0)).numpy(), cmap="gray" if grey else None)
        ax.set_title(caption, fontsize=6)  # class names drawn as written by _save
    fig.suptitle(f"{title}, by {failures.what}", fontsize=9)
    return _save(fig, path)
