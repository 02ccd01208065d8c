"""Inference with a finished run: its directory loaded (`load_run`), image files preprocessed as its evaluation
batches are (`Preprocess`), a split read (`split_images`), batched prediction with the finiteness checks
(`predict_outputs`, `split_outputs`), and the whole-split evaluation of `visionbench eval` (`evaluate_run`).

A run needs no training data to predict: the dataset facts (`data_info`: input size, mean and std, class names,
per-image scaling) and the regression standardisation (`task_stats`) come from its summary.json. Runs written
before `data_info` was saved rebuild the dataset instead, as `visionbench eval` does; a field the saved `data_info`
predates takes the dataset's registered convention (`data.base.saved_info`).

Each image file goes through the run's own evaluation preprocessing, whatever its size: decoded with Pillow as one
grey or three RGB channels (the model's `in_chans`; `.npy` arrays as they are), resized to the run's input size
with the streaming loader's evaluation resize (antialiased, the run's `data.interpolation`, timm's crop_pct view
with `data.eval_crop_pct`; skipped when the size already fits and no crop is asked for), min-max scaled per image
for datasets that scale each image on their own, then standardised with the mean and std the run trained with
(0 and 1 for a run with `data.normalize: false`: scaled to [0, 1] only, as its training was). A prediction that
is not finite is an error naming the image, never a NaN: weights and inputs are checked finite when read, so it
means the model overflows on that image.

The run's task object (its threshold, its standardisation) answers every question about the outputs: what they
decide, how predict reports them, what explain attributes.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from visionbench import layout
from visionbench.errors import UserError, first_line

if TYPE_CHECKING:  # the CLI imports this module inside its commands; the heavy modules wait until they are used
    from visionbench.config import RunConfig
    from visionbench.data import DatasetInfo
    from visionbench.tasks import Task

WEIGHTS = ("best", "last")
SPLITS = ("train", "val", "test")
TTA = ("none", "flip")
BATCH_SIZE = 64  # predict's files: a batch of decoded images in memory at a time
SPLIT_BATCH_SIZE = 256  # a split already in memory (explain, analyze)


@dataclasses.dataclass
class LoadedRun:
    """A run directory ready for inference: the model is in eval mode on the CPU, with the chosen weights."""

    cfg: RunConfig
    info: DatasetInfo  # input size, mean/std, class names, per-image scaling and display conventions
    task: Task  # with the run's threshold and target standardisation
    model: nn.Module
    temperature: float | None = None  # predict's logits are divided by it (engine/calibration.py's use_temperature)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"--split: expected train, val or test, got {split!r}")


def load_run(run_dir: Path, weights: str = "best") -> LoadedRun:
    """Rebuild a run's model and task from its directory, as `visionbench eval` does, and load its weights.

    Args:
        run_dir: a directory written by `visionbench train`.
        weights: `best` (checkpoints/best.safetensors) or `last` (checkpoints/last, its EMA when it has one).

    Raises:
        UserError: not a run directory, an unreadable summary, missing or foreign weights.
    """
    from visionbench.config import load_config
    from visionbench.data import build_datasets
    from visionbench.engine.assembly import create_run_model
    from visionbench.engine.checkpoint import load_run_weights
    from visionbench.tasks import build_task
    from visionbench.utils.io import read_json

    if weights not in WEIGHTS:
        raise UserError(f"--weights: expected best or last, got {weights!r}")
    if not (run_dir / layout.CONFIG).is_file():
        raise UserError(f"{run_dir}: not a run directory (no {layout.CONFIG})")
    cfg = load_config(run_dir / layout.CONFIG)
    summary_path = run_dir / layout.SUMMARY
    summary = read_json(summary_path) if summary_path.is_file() else {}
    if not isinstance(summary, dict):
        raise UserError(f"{summary_path}: expected a JSON object")
    data = None  # the dataset itself, only for runs whose summary lacks what inference needs
    info = _saved_info(summary, summary_path)
    if info is None:
        data = build_datasets(cfg.data)
        info = data.info
    task = build_task(cfg.task, info)
    if summary.get("task_stats"):  # the standardisation the run trained with, not one recomputed from today's files
        _load_task_stats(task, summary["task_stats"], summary_path)
    elif task.stats():
        data = data if data is not None else build_datasets(cfg.data)
        task.fit_targets(data.train.targets)
    model = create_run_model(cfg, info)  # as training built it, without build_model's FLOP count
    load_run_weights(run_dir, model, weights)  # digest checked when the file has one; weights finite
    return LoadedRun(cfg=cfg, info=info, task=task.eval(), model=model.eval())


def _saved_info(summary: dict[str, Any], source: Path) -> DatasetInfo | None:
    """The DatasetInfo saved in summary.json (`data_info`), or None for runs written before it was."""
    from visionbench.data.base import saved_info

    saved = summary.get("data_info")
    if saved is None:
        return None
    try:
        info = saved_info(saved)
    except (TypeError, AttributeError) as e:
        raise UserError(f"{source}: data_info is not what `visionbench train` writes ({e})") from None
    _check_info(info, source)
    return info


def _check_info(info: DatasetInfo, source: Path) -> None:
    """What preprocessing and the outputs need from data_info, with the meaning it must have: a positive input
    size, finite means and positive finite standard deviations (one per channel, or the RGB ones of a grey run),
    one name per output."""
    size = info.input_size
    if not (len(size) == 3 and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        raise UserError(f"{source}: data_info.input_size {list(size)} is not (C, H, W) of positive integers")
    for key in ("mean", "std"):
        values = getattr(info, key)
        if not _finite_numbers(values):
            raise UserError(f"{source}: data_info.{key} {list(values)} holds values that are not finite numbers")
    if len(info.mean) != len(info.std) or len(info.mean) not in (1, 3, size[0]):
        raise UserError(f"{source}: data_info.mean and std have {len(info.mean)} and {len(info.std)} values")
    if any(v <= 0 for v in info.std):
        raise UserError(f"{source}: data_info.std {list(info.std)} must be positive (images are divided by it)")
    if not (isinstance(info.num_outputs, int) and len(info.class_names) == info.num_outputs > 0):
        raise UserError(f"{source}: data_info has {len(info.class_names)} class names for {info.num_outputs} outputs")
    if not all(isinstance(name, str) for name in info.class_names):
        raise UserError(f"{source}: data_info.class_names holds values that are not strings")


def _finite_numbers(values: Any) -> bool:
    """Every value a finite int or float (not a bool, which JSON would also give as a number)."""
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _load_task_stats(task: Task, stats: Any, source: Path) -> None:
    """The run's regression standardisation (`task_stats`): finite means, positive finite standard deviations."""
    if not isinstance(stats, dict) or not all(isinstance(v, list) for v in stats.values()):
        raise UserError(f"{source}: task_stats is not what `visionbench train` writes (lists by name)")
    for key, values in stats.items():
        if not _finite_numbers(values):
            raise UserError(f"{source}: task_stats.{key} holds values that are not finite numbers")
        if key.endswith("_std") and any(v <= 0 for v in values):
            raise UserError(f"{source}: task_stats.{key} {values} must be positive (outputs are scaled by it)")
    try:
        task.load_stats(stats)
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"{source}: task_stats does not fit this run's task ({first_line(e)})") from None


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The evaluation preprocessing of a run, from its dataset facts and its data section's resize settings."""

    info: DatasetInfo
    mean: torch.Tensor  # (C,), [0, 1] units
    std: torch.Tensor  # (C,)
    interpolation: str = "bilinear"  # data.interpolation
    crop_pct: float | None = None  # data.eval_crop_pct

    @classmethod
    def from_info(cls, info: DatasetInfo, data_cfg=None) -> Preprocess:
        """`data_cfg`: the run's DataConfig (its interpolation and eval_crop_pct); None: their defaults."""
        mean, std = info.mean, info.std
        if info.input_size[0] == 1 and len(mean) > 1:  # grey images of an RGB-statistics dataset: StreamLoader's rule
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        sizing = {"interpolation": data_cfg.interpolation, "crop_pct": data_cfg.eval_crop_pct} if data_cfg else {}
        return cls(info, torch.tensor(mean), torch.tensor(std), **sizing)

    def __call__(self, path: Path) -> torch.Tensor:
        """One file as a (C, H, W) float32 tensor, standardised as the run's evaluation batches are."""
        from torchvision.transforms import v2

        from visionbench.data.image_file import read_image_file, scale_image
        from visionbench.data.stream import resize_ops
        from visionbench.data.transforms import normalize

        C, H, W = self.info.input_size
        x = read_image_file(path, self.info)
        if x.shape[0] != C:
            if x.shape[0] == 1:  # a grey array for an RGB model, as Pillow's convert("RGB") does
                x = x.expand(C, -1, -1)
            else:
                raise UserError(f"{path}: an array of {x.shape[0]} channels; the model takes {C}")
        if tuple(x.shape[-2:]) != (H, W) or self.crop_pct is not None:
            x = v2.Compose(resize_ops((H, W), self.interpolation, self.crop_pct))(x)  # as the streaming loader's
        x = scale_image(x, self.info)  # after resizing, so that the model sees exactly its training images' range
        return normalize(x[None], self.mean, self.std)[0]


def image_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The files to predict: each file as given, each folder's image files (not its subfolders'), sorted by name;
    and a note for each folder whose subfolders were not searched.

    Raises:
        UserError: a path that does not exist, or a folder without image files.
    """
    from visionbench.data.folder import IMAGE_EXTENSIONS

    files, notes = [], []
    for path in paths:
        if not path.is_dir():
            if not path.exists():
                raise UserError(f"{path}: no such image file")
            files.append(path)  # decode_image refuses what is not a regular file
            continue
        try:
            entries = sorted(path.iterdir())
        except OSError as e:
            raise UserError(f"{path}: cannot list the folder ({e.strerror or e})") from None
        found = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise UserError(f"{path}: a folder with no image files directly in it ({', '.join(IMAGE_EXTENSIONS)})")
        subfolders = sum(p.is_dir() for p in entries)
        if subfolders:
            notes.append(f"{path}: the {len(found)} images directly in it; {subfolders} subfolder(s) not searched")
        files += found
    return files, notes


@torch.inference_mode()
def predict_logits(run: LoadedRun, images: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """The model's raw outputs (float32) of a (B, C, H, W) batch, `batch_size` images at a time."""
    return torch.cat([run.model(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])


def predict_outputs(run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
    """The task's activated outputs (probabilities, or values in target units) of a (B, C, H, W) batch, the logits
    divided by the run's temperature first when it has one."""
    logits = predict_logits(run, images)
    return run.task.activate(logits if run.temperature is None else logits / run.temperature)


def predict_files(run: LoadedRun, files: list[Path], top_k: int) -> list[dict[str, Any]]:
    """predict's record of each file: `image`, `task` and the task's description of its output (`describe`).
    Every file is decoded and predicted before anything is returned, a batch in memory at a time.

    Raises:
        UserError: an unreadable file, or an output that is not finite (naming the file).
    """
    records = []
    for chunk, outputs in predicted_batches(run, files):
        scaled = {} if run.temperature is None else {"temperature": run.temperature}
        records += [
            {"image": str(path), "task": run.task.name, **scaled, **run.task.describe(out, top_k)}
            for path, out in zip(chunk, outputs, strict=True)
        ]
    return records


def predicted_batches(run: LoadedRun, files: list[Path]) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """(files, their activated outputs) of image files decoded and preprocessed as the run was trained, BATCH_SIZE
    at a time.

    Raises:
        UserError: an unreadable file, or an output that is not finite (naming the file).
    """
    preprocess = Preprocess.from_info(run.info, run.cfg.data)
    for start in range(0, len(files), BATCH_SIZE):
        chunk = files[start : start + BATCH_SIZE]
        outputs = predict_outputs(run, torch.stack([preprocess(p) for p in chunk]))
        check_finite_outputs(outputs, [str(p) for p in chunk])
        yield chunk, outputs


def non_finite_rows(outputs: torch.Tensor) -> torch.Tensor:
    """The indices of the inputs whose output (B, ...) holds a NaN or an infinity."""
    return (~torch.isfinite(outputs.reshape(len(outputs), -1))).any(1).nonzero()


def check_finite_outputs(outputs: torch.Tensor, names: list[str]) -> None:
    """A UserError naming the first input whose output (B, ...) is NaN or infinite: weights and inputs are checked
    finite when read, so the model overflows on it, and no number printed for it would mean anything."""
    bad = non_finite_rows(outputs)
    if len(bad):
        first = int(bad[0])
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(
            f"{names[first]}: the model's output is not finite (NaN or infinite){more}; its weights and this input "
            "are finite, so the model overflows on it"
        )


def split_images(run: LoadedRun, split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` normalised images (float32, NCHW contiguous, on the CPU) and targets of a run's whole
    `split` (data.test_subset ignored), read through the run's evaluation loader.

    Raises:
        UserError: the run has no such split (a validation split of a run with val_fraction 0).
    """
    from visionbench.data import build_datasets
    from visionbench.engine.assembly import eval_loader

    cfg = run.cfg.model_copy(update={"trainer": run.cfg.trainer.model_copy(update={"channels_last": False})})
    data = build_datasets(cfg.data.model_copy(update={"test_subset": None}))
    if getattr(data, split) is None:
        raise UserError(f"--split {split}: this run has no {split} split (data.val_fraction is 0)")
    images, targets, seen = [], [], 0
    for x, y in eval_loader(data, split, cfg, torch.device("cpu")):
        images.append(x.float())
        targets.append(y)
        seen += len(x)
        if seen >= limit:
            break
    return torch.cat(images)[:limit].contiguous(), torch.cat(targets)[:limit]


def split_outputs(run: LoadedRun, images: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, activated outputs) of a split's images, both checked finite: a model that overflows on the clean
    images would make every map and table meaningless. `where` names the split in the error (`<run>: test`)."""
    logits = predict_logits(run, images, SPLIT_BATCH_SIZE)
    outputs = run.task.activate(logits)
    names = [f"{where} image {i}" for i in range(len(images))]
    check_finite_outputs(logits, names)
    check_finite_outputs(outputs, names)
    return logits, outputs


def pixels(info: DatasetInfo, images: torch.Tensor) -> torch.Tensor:
    """Standardised (B, C, H, W) images back in [0, 1] pixel units (clamped)."""
    mean = torch.tensor(info.mean or (0.0,))[:, None, None]
    std = torch.tensor(info.std or (1.0,))[:, None, None]
    return (images * std + mean).clamp(0, 1)


def display_images(info: DatasetInfo, images: torch.Tensor) -> torch.Tensor:
    """Standardised images as figures show them: in pixel units, or as the model sees them when the dataset
    says so (`display_denormalized`)."""
    return pixels(info, images) if info.display_denormalized else images


def evaluate_run(
    run_dir: Path, split: str, tta: str, weights: str, calibrate: bool = False
) -> tuple[dict[str, Any], Path]:
    """`visionbench eval`: a run's weights on its whole split (data.test_subset ignored), with test-time
    augmentation `tta`; the metrics are saved as `eval-<split>-<tta>-<weights>.json` in the run directory.
    `calibrate` fits a temperature on the validation split first (engine/calibration.py) and adds its scores.

    Returns:
        The result (split, images, tta, weights, `<split>/<metric>`; a metric undefined on the split is None; with
        `calibrate`, `calibration`) and the file it was written to.

    Raises:
        UserError: bad arguments, a bad run directory, outputs that are not finite, or (`calibrate`) a run
            without a validation split or whose outputs are not probabilities.
    """
    from visionbench import per_image
    from visionbench.config import load_config
    from visionbench.data import build_datasets
    from visionbench.engine.calibration import check_calibratable
    from visionbench.engine.runtime import resolve_device
    from visionbench.utils.io import write_json

    if tta not in TTA:
        raise UserError(f"--tta: expected none or flip, got {tta!r}")
    if calibrate and tta != "none":  # the temperature is for predict's and export's outputs, which have no TTA
        raise UserError(
            "--calibrate: the temperature is for predict's and export's outputs, which have no test-time "
            "augmentation; drop --tta flip"
        )
    run = load_run(run_dir, weights)  # the model with its weights, the task with the run's standardisation
    if calibrate:
        check_calibratable(run.task)
    cfg = load_config(run_dir / layout.CONFIG, [f"trainer.tta={tta}"])
    device = resolve_device(cfg.trainer.device)
    data = build_datasets(cfg.data.model_copy(update={"test_subset": None}))  # the whole split, always
    if calibrate and data.val is None:
        raise UserError(
            "--calibrate: this run has no val split (data.val_fraction is 0) to fit a temperature on; it is never "
            "fitted on the test split"
        )
    metrics, logits, targets = _evaluate_split(run, data, split, cfg, device, run_dir)
    images = len(getattr(data, split)) if getattr(data, split, None) is not None else 0
    result = {
        "split": split,
        "images": images,
        "tta": tta,
        "weights": weights,
        # a metric undefined on this split (from finite outputs) is null in the JSON, not NaN (invalid JSON)
        **{f"{split}/{k}": v if math.isfinite(v) else None for k, v in metrics.items()},
    }
    if calibrate:
        result["calibration"] = _calibrate(run, data, cfg, device, run_dir, weights, split, (logits, targets))
    path = run_dir / layout.eval_result(split, tta, weights)
    write_json(path, result)
    per_image.save(run_dir / layout.eval_per_image(split, tta, weights), run.task, logits, targets, split)
    return result, path


def _evaluate_split(run: LoadedRun, data, split: str, cfg: RunConfig, device: torch.device, run_dir: Path):
    """(metrics, logits, targets) of the run's model on a whole split, the outputs checked finite."""
    from visionbench.engine.assembly import eval_loader
    from visionbench.engine.loop import evaluate

    model, task = run.model.to(device), run.task.to(device)
    with warnings.catch_warnings(record=True) as caught:  # torchmetrics warns of NaN before we can say why
        warnings.simplefilter("always")
        metrics, logits, targets = evaluate(model, eval_loader(data, split, cfg, device), task, device, cfg.trainer)
    bad = len(non_finite_rows(logits))
    if bad:  # weights and data are checked finite when read: the model overflows, and no metric would mean anything
        raise UserError(
            f"{run_dir}: the model's outputs are not finite (NaN or infinite) on {bad} of {len(logits)} {split} "
            "images; its weights are finite, so the model overflows on them"
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return metrics, logits, targets


def _calibrate(run: LoadedRun, data, cfg, device, run_dir: Path, weights: str, split: str, outputs) -> dict[str, Any]:
    """eval's `calibration`: a temperature fitted on the validation split's logits (those of `outputs` when
    `split` is val), the evaluated split's scores before and after."""
    from visionbench.engine.calibration import FITTED_ON, calibrate

    fit = outputs if split == FITTED_ON else _evaluate_split(run, data, FITTED_ON, cfg, device, run_dir)[1:]
    return calibrate(run, run_dir, weights, fit, split, outputs)
