"""`visionbench predict RUN_DIR IMAGES... [--weights best|last] [--top-k 5] [--json]`: a trained run on image files.

Each file goes through the run's own evaluation preprocessing, whatever its size: decoded with Pillow as one grey
or three RGB channels (the model's `in_chans`; `.npy` arrays as they are), resized to the run's input size with
the streaming loader's resize (bilinear, antialiased; skipped when the size already fits), min-max scaled per image
for DeepLense runs, then standardised with the mean and std the run trained with. Those facts (`data_info`) and the
regression standardisation (`task_stats`) come from the run's summary.json, so no training data is needed; runs
written before `data_info` was saved rebuild the dataset instead, as `visionbench eval` does.

A folder among IMAGES stands for the image files directly in it (the extensions image folders are read with,
sorted by name; subfolders are not searched, and a note on stderr says so). Every file is decoded and predicted
before anything is printed, so bad input prints nothing but the error line. A prediction that is not finite is an
error naming the image, never a NaN in the output: weights and inputs are checked finite when read, so it means the
model overflows on that image.

`load_run` (config, dataset facts, task, model with its weights) is shared with `visionbench export` and `eval`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import typer
from torch import nn

from visionbench import layout
from visionbench.errors import UserError, first_line

if TYPE_CHECKING:  # the CLI imports the heavy modules inside the commands
    from visionbench.config import RunConfig
    from visionbench.data import DatasetInfo
    from visionbench.tasks import Task

WEIGHTS = ("best", "last")
PER_IMAGE_MINMAX = ("deeplense",)  # datasets whose images are scaled to [0, 1] one by one before standardising
BATCH_SIZE = 64


@dataclasses.dataclass
class LoadedRun:
    """A run directory ready for inference: the model is in eval mode on the CPU, with the chosen weights."""

    cfg: RunConfig
    info: DatasetInfo  # input size, mean/std, class names
    task: Task  # with the run's target standardisation
    model: nn.Module
    kind: str  # task registry name: classification, multilabel or regression


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
    return LoadedRun(cfg=cfg, info=info, task=task.eval(), model=model.eval(), kind=cfg.task.name or info.task)


def _saved_info(summary: dict[str, Any], source: Path) -> DatasetInfo | None:
    """The DatasetInfo saved in summary.json (`data_info`), or None for runs written before it was."""
    from visionbench.data import DatasetInfo

    saved = summary.get("data_info")
    if saved is None:
        return None
    try:
        info = DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
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
    """The evaluation preprocessing of a run, from its dataset facts."""

    input_size: tuple[int, int, int]  # (C, H, W)
    mean: torch.Tensor  # (C,), [0, 1] units
    std: torch.Tensor  # (C,)
    minmax: bool  # scale each image to [0, 1] first (DeepLense)

    @classmethod
    def from_info(cls, info: DatasetInfo) -> Preprocess:
        mean, std = info.mean, info.std
        if info.input_size[0] == 1 and len(mean) > 1:  # grey images of an RGB-statistics dataset: StreamLoader's rule
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        return cls(tuple(info.input_size), torch.tensor(mean), torch.tensor(std), info.name in PER_IMAGE_MINMAX)

    def __call__(self, path: Path) -> torch.Tensor:
        """One file as a (C, H, W) float32 tensor, standardised as the run's evaluation batches are."""
        from torchvision.transforms.v2 import functional as TF

        from visionbench.data.transforms import normalize

        C, H, W = self.input_size
        x = self._decode(path)
        if x.shape[0] != C:
            if x.shape[0] == 1:  # a grey array for an RGB model, as Pillow's convert("RGB") does
                x = x.expand(C, -1, -1)
            else:
                raise UserError(f"{path}: an array of {x.shape[0]} channels; the model takes {C}")
        if tuple(x.shape[-2:]) != (H, W):
            x = TF.resize(x, [H, W], antialias=True)  # v2.Resize's defaults, as the streaming loader uses
        if self.minmax:  # after resizing, so that the model sees exactly [0, 1] like the training images
            from visionbench.data.deeplense import minmax

            x = minmax(x[None].float().numpy())[0]
        return normalize(x[None], self.mean, self.std)[0]

    def _decode(self, path: Path) -> torch.Tensor:
        from visionbench.data.stream import decode_image

        if not path.exists():
            raise UserError(f"{path}: no such image file")
        if self.minmax and path.suffix == ".npy":  # a DeepLense release file ([image, label] or an image)
            from visionbench.data.deeplense import load_release_file

            image, _ = load_release_file(path)  # its errors name the file; a FIFO or a device is refused there
            return torch.from_numpy(image)[None]
        return decode_image(str(path), grayscale=self.input_size[0] == 1)


@torch.inference_mode()
def predict_outputs(run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
    """The task's activated outputs (probabilities, or values in target units) of a (B, C, H, W) batch."""
    outputs = [run.task.activate(run.model(images[i : i + BATCH_SIZE])) for i in range(0, len(images), BATCH_SIZE)]
    return torch.cat(outputs)


def check_finite_outputs(outputs: torch.Tensor, names: list[str]) -> None:
    """A UserError naming the first input whose output (B, ...) is NaN or infinite: weights and inputs are checked
    finite when read, so the model overflows on it, and no number printed for it would mean anything."""
    bad = (~torch.isfinite(outputs.reshape(len(outputs), -1))).any(1).nonzero()
    if len(bad):
        first = int(bad[0])
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(
            f"{names[first]}: the model's output is not finite (NaN or infinite){more}; its weights and this input "
            "are finite, so the model overflows on it"
        )


def _classification(run: LoadedRun, probs: torch.Tensor, top_k: int) -> dict[str, Any]:
    values, indices = probs.topk(min(top_k, probs.shape[-1]))
    names = run.info.class_names
    ranked = [
        {"label": names[i], "index": i, "probability": p}
        for p, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
    return {"predictions": ranked}


def _multilabel(run: LoadedRun, probs: torch.Tensor, top_k: int) -> dict[str, Any]:
    threshold = run.task.threshold  # "over" as the F1 metric counts it (torchmetrics: p > threshold)
    labels = [
        {"label": name, "index": i, "probability": p, "positive": p > threshold}
        for i, (name, p) in enumerate(zip(run.info.class_names, probs.tolist(), strict=True))
    ]
    return {"threshold": threshold, "predictions": labels}


def _regression(run: LoadedRun, values: torch.Tensor, top_k: int) -> dict[str, Any]:
    targets = [
        {"label": name, "index": i, "value": v}
        for i, (name, v) in enumerate(zip(run.info.class_names, values.tolist(), strict=True))
    ]
    return {"predictions": targets}


@dataclasses.dataclass(frozen=True)
class _Output:
    """How one task kind reads: its JSON fields, and its table columns with the cells of one prediction."""

    fields: Callable[[LoadedRun, torch.Tensor, int], dict[str, Any]]
    columns: tuple[str, ...]
    cells: Callable[[int, dict[str, Any]], list[str]]


OUTPUTS = {
    "classification": _Output(
        _classification,
        ("rank", "class", "probability"),
        lambda k, p: [str(k + 1), p["label"], f"{p['probability']:.4f}"],
    ),
    "multilabel": _Output(
        _multilabel,
        ("label", "probability", "positive"),
        lambda k, p: [p["label"], f"{p['probability']:.4f}", "yes" if p["positive"] else ""],
    ),
    "regression": _Output(_regression, ("target", "value"), lambda k, p: [p["label"], f"{p['value']:.6g}"]),
}


def predict(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    images: list[Path] = typer.Argument(
        ...,
        help="Image files (PNG, JPEG, anything Pillow reads) or .npy arrays; a folder stands for the image files "
        "directly in it.",
    ),
    weights: str = typer.Option("best", help=f"best ({layout.BEST}) or last ({layout.LAST})."),
    top_k: int = typer.Option(5, "--top-k", help="Classification: the K most probable classes (all: K >= classes)."),
    json_lines: bool = typer.Option(False, "--json", help="One JSON object per image instead of a table."),
) -> None:
    """Predict with a run's weights: top-k classes, every label's probability, or regression values in target units.

    Images of any size are resized to the run's input size and normalised as in training: 8-bit images divided by
    255, 16-bit ones by 65535, float arrays taken in [0, 1].
    """
    if top_k < 1:
        raise UserError(f"--top-k: expected a positive integer, got {top_k}")
    files, notes = _image_files(images)
    run = load_run(run_dir, weights)
    output = OUTPUTS.get(run.kind)
    if output is None:
        raise UserError(f"{run_dir}: predict knows the tasks {', '.join(OUTPUTS)}, not {run.kind!r}")
    preprocess = Preprocess.from_info(run.info)
    records = []
    for start in range(0, len(files), BATCH_SIZE):  # a folder of any size, a batch in memory at a time
        chunk = files[start : start + BATCH_SIZE]
        outputs = predict_outputs(run, torch.stack([preprocess(p) for p in chunk]))
        check_finite_outputs(outputs, [str(p) for p in chunk])
        records += [
            {"image": str(path), "task": run.kind, **output.fields(run, out, top_k)}
            for path, out in zip(chunk, outputs, strict=True)
        ]
    if json_lines:
        lines = [json.dumps(record, allow_nan=False) for record in records]  # strict JSON, never NaN or Infinity
        print("\n".join(lines))
    else:
        _print_table(records, output)
    for note in notes:  # after the answer: bad input must stay one line on stderr
        print(f"note: {note}", file=sys.stderr)


def _image_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
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


def _print_table(records: list[dict[str, Any]], output: _Output) -> None:
    """One row per prediction; the image named on its first row."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table("image", *output.columns)
    for record in records:  # file and class names are data, not rich markup: "[red]" is printed as it is
        for k, prediction in enumerate(record["predictions"]):
            cells = [record["image"] if k == 0 else "", *output.cells(k, prediction)]
            table.add_row(*(Text(cell) for cell in cells))
    if "threshold" in records[0]:
        table.caption = f"positive: probability > {records[0]['threshold']:g}"
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120).print(table)
