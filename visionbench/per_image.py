"""Per-image outputs of a split, stored compactly beside a run's other test artifacts: what a confidence interval
over the test images and a paired test between two runs resample (report/stats.py). Like layout.py, this module
is the format of a run-directory file, below the engine that writes it and the report that reads it.

What is kept follows the run's main metric, so that the metric can be recomputed, with the definition the run
used, on any resample of the images (`score`, on resample counts, vectorised over resamples):

- `acc1` (top-1 accuracy, micro): the targets and the predicted class (argmax of the logits, as torchmetrics takes
  it; int32), the right/wrong bit (bool), the probability of the true class (float16), and every class's
  probability (float16) when the split has at most `FULL_PROBS` of them;
- `map` (macro average precision over the classes with a positive): the sigmoid scores (float32) and the targets
  (int8: 1 present, 0 absent, -1 ignored). float32, not float16: AP ranks the scores, and float16's 11-bit
  mantissa ties nearby scores, which changes AP (0.4786 against 0.4791 for 5,000 random images x 20 classes,
  logits N(0, 1) + 1.5 on a positive);
- `mae` (mean absolute error over every output of every image): the predictions and targets in target units
  (float32, N x K).

The file is safetensors: no code runs on load, and its header is checked against its size. Its metadata names the
metric and split, a SHA-256 of the targets (what a paired test compares: the same images in the same order) and a
SHA-256 of every array, checked on read. Reading is bounded (a regular file of at most `MAX_BYTES`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from visionbench.errors import first_line
from visionbench.utils.bounded import MiB, UnreadableFile, check_regular

if TYPE_CHECKING:  # report reads these files without importing torch
    import torch

    from visionbench.tasks import Task

FULL_PROBS = 1 << 20  # class probabilities kept for every image up to this many (2 MiB as float16)
MAX_BYTES = 512 * MiB  # COCO's 40,504 validation images x 80 classes take 15.5 MiB
WHAT = "per-image outputs"
_FORMAT = "1"


@dataclasses.dataclass(frozen=True)
class PerImage:
    """One run's per-image outputs on a split, as read back (`load`)."""

    metric: str
    split: str
    arrays: dict[str, np.ndarray]
    targets_digest: str  # SHA-256 of the targets as stored
    source: str  # how messages name the file

    @property
    def images(self) -> int:
        return len(self.arrays["targets"])


def _classes(logits: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    preds = logits.argmax(-1)
    arrays = {
        "targets": targets.numpy().astype(np.int32),
        "preds": preds.numpy().astype(np.int32),
        "correct": (preds == targets).numpy(),
        "true_prob": outputs.gather(1, targets.long()[:, None])[:, 0].numpy().astype(np.float16),
    }
    if outputs.numel() <= FULL_PROBS:
        arrays["probs"] = outputs.numpy().astype(np.float16)
    return arrays


def _scores(logits: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    return {"scores": outputs.numpy().astype(np.float32), "targets": targets.numpy().astype(np.int8)}


def _values(logits: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    preds = outputs.reshape(len(outputs), -1)
    return {
        "preds": preds.numpy().astype(np.float32),
        "targets": targets.reshape(preds.shape).numpy().astype(np.float32),
    }


def _accuracy(arrays: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    return counts @ arrays["correct"].astype(np.float64) / counts.shape[1]


def _mae(arrays: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    errors = np.abs(arrays["preds"].astype(np.float64) - arrays["targets"]).mean(1)  # every image has K outputs
    return counts @ errors / counts.shape[1]


def _macro_ap(arrays: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """torchmetrics' step-wise AP per class (a threshold at each distinct score, ignored entries left out), with
    each image weighing its count in the resample, averaged over the classes that have a positive in it."""
    scores, targets = arrays["scores"], arrays["targets"]
    per_class = np.full((len(counts), scores.shape[1]), np.nan)
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        order = order[targets[order, c] >= 0]  # an ignored entry is no threshold and no image of this class
        if not len(order):
            continue
        s, positive = scores[order, c], targets[order, c] == 1
        ends = np.append(np.flatnonzero(np.diff(s)), len(s) - 1)  # the last image of each group of tied scores
        w = counts[:, order]  # (R, n)
        tp = np.cumsum(w * positive, axis=1, dtype=np.int64)[:, ends]
        seen = np.cumsum(w, axis=1, dtype=np.int64)[:, ends]
        precision = tp / np.maximum(seen, 1)  # 0 where nothing is drawn yet, where tp is 0 too
        gained = np.diff(tp, axis=1, prepend=0)  # positives first reached at each threshold
        positives = tp[:, -1]
        area = (gained * precision).sum(1)
        per_class[:, c] = np.divide(area, positives, out=np.full(len(area), np.nan), where=positives > 0)
    with np.errstate(all="ignore"):
        scorable = np.isfinite(per_class).any(1)
        return np.where(scorable, np.nanmean(np.where(scorable[:, None], per_class, 0.0), 1), np.nan)


@dataclasses.dataclass(frozen=True)
class _Metric:
    pack: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, np.ndarray]]  # logits, outputs, targets
    score: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
    arrays: dict[str, tuple[type, int]]  # the arrays it needs, targets first: kind of dtype, number of dimensions


_METRICS = {
    "acc1": _Metric(_classes, _accuracy, {"targets": (np.integer, 1), "correct": (np.bool_, 1)}),
    "map": _Metric(_scores, _macro_ap, {"targets": (np.integer, 2), "scores": (np.floating, 2)}),
    "mae": _Metric(_values, _mae, {"targets": (np.floating, 2), "preds": (np.floating, 2)}),
}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: Path, task: Task, logits: torch.Tensor, targets: torch.Tensor, split: str = "test") -> bool:
    """Write the per-image outputs of a split that `task` evaluated (whole-split logits and targets, any device),
    atomically; False (nothing written) when the task's main metric has no per-image form."""
    metric = _METRICS.get(task.main_metric)
    if metric is None:
        return False
    logits = logits.detach().float()
    outputs = task.activate(logits)  # on the task's device (its standardisation lives there)
    write_arrays(path, task.main_metric, metric.pack(logits.cpu(), outputs.cpu(), targets.detach().cpu()), split)
    return True


def write_arrays(path: Path, metric: str, arrays: dict[str, np.ndarray], split: str = "test") -> None:
    """Write per-image arrays as `save` does, with their digests (tests write their own outputs through it)."""
    import safetensors.numpy

    from visionbench.utils.io import write_bytes

    meta = {
        "format": _FORMAT,
        "metric": metric,
        "split": split,
        "targets_sha256": _digest({"targets": arrays["targets"]}),
        "sha256": _digest(arrays),
    }
    write_bytes(path, safetensors.numpy.save({k: np.ascontiguousarray(a) for k, a in arrays.items()}, metadata=meta))


def load(path: Path, source: str | None = None) -> PerImage:
    """Read a per-image file back: a regular safetensors file of at most `MAX_BYTES` whose digest matches, with
    the arrays its metric needs, one row per image, all finite.

    Raises:
        UnreadableFile: anything else (missing: `missing` is set).
    """
    import safetensors

    source = source or str(path)
    check_regular(path, WHAT, MAX_BYTES)
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    except FileNotFoundError:
        raise UnreadableFile(source, f"no {WHAT}", missing=True) from None
    except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError on a bad header)
        raise UnreadableFile(source, f"not a readable safetensors file ({first_line(e)})") from None
    if meta.get("sha256") != _digest(arrays):
        raise UnreadableFile(source, f"checksum mismatch: the {WHAT} are corrupted or were not written by visionbench")
    metric = _METRICS.get(meta.get("metric", ""))
    if metric is None:
        raise UnreadableFile(source, f"{WHAT} for metric {meta.get('metric')!r}, which has no per-image form")
    for name, (kind, ndim) in metric.arrays.items():  # targets first
        a = arrays.get(name)
        if a is None or not np.issubdtype(a.dtype, kind) or a.ndim != ndim or a.shape != arrays["targets"].shape:
            raise UnreadableFile(
                source, f"{WHAT}: `{name}` is missing or not {ndim}-D {kind.__name__} shaped as the targets"
            )
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise UnreadableFile(source, f"{WHAT}: `{name}` holds values that are not finite")
    if not len(arrays["targets"]):
        raise UnreadableFile(source, f"{WHAT} of no image")
    targets_digest = _digest({"targets": arrays["targets"]})  # from the arrays, not from what the header says
    return PerImage(meta["metric"], meta.get("split", "?"), arrays, targets_digest, source)


def score(data: PerImage, counts: np.ndarray) -> np.ndarray:
    """The run's metric on resamples of its images: `counts` (R, N) is how often each image is drawn in each;
    returns (R,) float64, NaN where a resample cannot be scored (no positive of any class for `map`)."""
    return _METRICS[data.metric].score(data.arrays, counts)


def value(data: PerImage) -> float:
    """The metric on the split itself (every image once)."""
    return float(score(data, np.ones((1, data.images), dtype=np.int32))[0])
