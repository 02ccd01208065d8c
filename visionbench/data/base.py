"""What every dataset builder returns, and the train/val/test carving (where its files come from: `download.py`).

A dataset family is one file in `data/` with a registered builder:

    @DATASETS.register("fashion-mnist")
    def fashion_mnist(root: Path | None, download: bool = True) -> RawDataset: ...

The builder returns the official train and test splits as uint8 tensors plus a `DatasetInfo`; `build_datasets`
then applies `data.subset`, carves the seeded validation split and computes normalisation statistics on the
train split, so no builder repeats that logic.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Callable

import torch

from visionbench.data.transforms import resize
from visionbench.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that models, tasks and reports need."""

    name: str
    task: str  # registry key in TASKS: "classification", ...
    num_outputs: int
    class_names: tuple[str, ...]
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...] = ()  # per channel, in [0, 1] units; filled from the train split
    std: tuple[float, ...] = ()
    # Conventions a few datasets change (see CONVENTIONS): values of no fixed range (not grey levels) that are
    # scaled to [0, 1] one image at a time before standardising, and figures that show the images as the model sees
    # them instead of un-standardised to [0, 1]
    per_image_minmax: bool = False
    display_denormalized: bool = True


# What a registered dataset sets differently from DatasetInfo's defaults, by dataset name (its file fills it in). A
# DatasetInfo saved before a field existed (summary.json's `data_info` of an older run) takes it from here.
CONVENTIONS: dict[str, dict[str, bool]] = {}


def saved_info(fields: dict) -> DatasetInfo:
    """A DatasetInfo from its saved fields (JSON: lists for tuples); a field the save predates takes the dataset's
    registered convention, else DatasetInfo's default.

    Raises:
        TypeError, AttributeError: `fields` is not what `vars(info)` wrote (unknown or missing keys, not a dict).
    """
    import visionbench.data  # noqa: F401  (every dataset file registers its conventions)

    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return DatasetInfo(**{**CONVENTIONS.get(values.get("name"), {}), **values})


@dataclasses.dataclass(frozen=True)
class StaticInfo:
    """What a config alone tells of its dataset, before any image is read: enough to build the run's model.

    A field that the dataset's files decide (an image folder's classes, a release's image size) is None when those
    files are not found, and `missing` says what was looked for. Class names and statistics are not here: CIFAR's
    names are in its meta file and every in-memory dataset's statistics come from its training images.
    """

    name: str
    task: str | None  # registry key in TASKS
    num_outputs: int | None
    input_size: tuple[int, int, int] | None  # (C, H, W) as the builder returns it, before data.image_size
    missing: str = ""


# A registered dataset's description (`static_info` in data/__init__.py): the function that tells its StaticInfo from
# the builder's arguments (defaults filled in), and whether it is streamed from disk (sized by data.image_size)
@dataclasses.dataclass(frozen=True)
class Description:
    describe: Callable[..., StaticInfo]
    streamed: bool


DESCRIPTIONS: dict[str, Description] = {}


def describes(name: str, streamed: bool = False) -> Callable:
    """Register the function that describes dataset `name` without reading its images. It takes the builder's
    arguments by name (extra ones it does not use go to `**_`) and returns a StaticInfo."""

    def register(describe: Callable[..., StaticInfo]) -> Callable[..., StaticInfo]:
        if name in DESCRIPTIONS:
            raise ValueError(f"duplicate dataset description {name!r}")
        DESCRIPTIONS[name] = Description(describe, streamed)
        return describe

    return register


@dataclasses.dataclass
class TensorSplit:
    """A whole split held in memory.

    Images are (N, C, H, W), uint8 grey levels or float (float32/float16) values already scaled to about [0, 1]
    (simulated lensing images, min-max normalised per image). Targets: int64 (N,) class indices, float32 (N, C)
    multi-hot (-1 = ignore), or float32 (N, T) regression values.
    """

    images: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        ok_dtype = self.images.dtype == torch.uint8 or self.images.is_floating_point()
        if not ok_dtype or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 or float (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: torch.Tensor | slice) -> TensorSplit:
        return TensorSplit(self.images[index], self.targets[index])


@dataclasses.dataclass
class FileSplit:
    """A split streamed from disk (datasets too large to hold in memory, e.g. Pascal VOC, user folders).

    Images are decoded, resized and augmented in DataLoader workers (`data/stream.py`); only the file paths and
    targets live in memory. Targets follow the task kind: int64 (N,) class indices, float32 (N, C) multi-hot
    (-1 marks "ignore", e.g. a VOC class present only as `difficult` objects), float32 (N, T) regression values.
    """

    paths: list[str]
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.targets):
            raise ValueError(f"{len(self.paths)} paths but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, index: torch.Tensor | slice) -> FileSplit:
        if isinstance(index, slice):
            return FileSplit(self.paths[index], self.targets[index])
        return FileSplit([self.paths[i] for i in index.tolist()], self.targets[index])


@dataclasses.dataclass
class RawDataset:
    """What a registered builder returns: the official splits and the dataset's facts."""

    train: TensorSplit | FileSplit
    test: TensorSplit | FileSplit
    info: DatasetInfo


# A dataset streamed from disk is resized by the loader (data.image_size), which also sets the input size that
# build_datasets reports: the size here is a placeholder. It is normalised with ImageNet's statistics, not its own.
STREAMED_INPUT_SIZE = (3, 224, 224)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def streamed_info(name: str, task: str, class_names: tuple[str, ...]) -> DatasetInfo:
    """The DatasetInfo of a dataset streamed from disk (image folders, CSV manifests, Pascal VOC)."""
    return DatasetInfo(
        name, task, len(class_names), class_names, STREAMED_INPUT_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )


def class_name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name, or None. A folder name that is not UTF-8 reaches Python as surrogate
    escapes, which no JSON, CSV or plot can write; a control character (a newline) would split every line it is in."""
    bad = next((c for c in name if unicodedata.category(c) in ("Cs", "Cc", "Zl", "Zp")), None)
    if bad is None:
        return None
    if unicodedata.category(bad) == "Cs":
        return "is not valid UTF-8"
    return f"holds the control character {bad!r}"


def class_indices(names: tuple[str, ...], classes: list[int | str], dataset: str) -> list[int]:
    """The label indices of `data.kwargs.classes` (indices or names of `dataset`'s classes `names`), in order.

    Raises:
        UserError: not a non-empty list, a class that `dataset` does not have, or one given twice.
    """
    if not isinstance(classes, (list, tuple)) or not classes:
        raise UserError(f"data.kwargs.classes: expected a non-empty list of class indices or names, got {classes!r}")
    picked = []
    for c in classes:
        index = names.index(c) if isinstance(c, str) and c in names else c
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
            raise UserError(f"data.kwargs.classes: {c!r} is not a class of {dataset} ({', '.join(names)})")
        if index in picked:
            raise UserError(f"data.kwargs.classes: {c!r} is given twice")
        picked.append(index)
    return picked


def subset_info(
    name: str, class_names: tuple[str, ...], input_size: tuple[int, int, int], classes: list | None = None, **_
) -> StaticInfo:
    """Describes an in-memory classification dataset whose `data.kwargs.classes` keeps a subset (checked as
    select_classes checks it); registered with its first three arguments bound (`functools.partial`)."""
    count = len(class_names) if classes is None else len(class_indices(class_names, classes, name))
    return StaticInfo(name, "classification", count, input_size)


def select_classes(raw: RawDataset, classes: list[int | str] | None) -> RawDataset:
    """Keep the images of `classes` (indices or names, in the order given, which becomes the new label order) in
    both splits of an in-memory classification dataset: `data.kwargs.classes` of the MNIST-like datasets."""
    if classes is None:
        return raw
    names = raw.info.class_names
    picked = class_indices(names, classes, raw.info.name)
    remap = torch.full((len(names),), -1, dtype=torch.int64)
    remap[picked] = torch.arange(len(picked))

    def keep(split: TensorSplit) -> TensorSplit:
        mask = remap[split.targets] >= 0
        return TensorSplit(split.images[mask], remap[split.targets[mask]])

    info = dataclasses.replace(raw.info, num_outputs=len(picked), class_names=tuple(names[i] for i in picked))
    return RawDataset(keep(raw.train), keep(raw.test), info)


def resize_split(split: TensorSplit, size: int, interpolation: str = "bilinear", chunk: int = 4096) -> TensorSplit:
    """Every image of an in-memory split resized to size x size (`transforms.resize`: antialiased, as the loaders
    resize batches), in chunks; uint8 stays uint8 (rounded). `data.image_size` below the stored size: once, at load."""
    if tuple(split.images.shape[-2:]) == (size, size):
        return split
    out = [
        resize(split.images[start : start + chunk], (size, size), interpolation)
        for start in range(0, len(split), chunk)
    ]
    images = torch.cat(out) if out else split.images.new_empty((0, split.images.shape[1], size, size))
    return TensorSplit(images, split.targets)


@dataclasses.dataclass
class Datasets:
    """What the engine trains on: train, optional val (carved from train) and test."""

    train: TensorSplit | FileSplit
    val: TensorSplit | FileSplit | None
    test: TensorSplit | FileSplit
    info: DatasetInfo

    @property
    def streamed(self) -> bool:
        """True for datasets read from disk batch by batch (FileSplit), False for those held in memory."""
        return isinstance(self.train, FileSplit)

    def split(self, name: str) -> TensorSplit | FileSplit:
        found = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if found is None:
            raise UserError(
                f"split {name!r} is not available (expected train, test, or val when data.val_fraction > 0)"
            )
        return found


def carve(raw: RawDataset, subset: int | None, val_fraction: float, seed: int) -> Datasets:
    """Keep the first `subset` training images, then split off a seeded `val_fraction` of them."""
    train = raw.train if subset is None else raw.train.take(slice(0, subset))
    val = None
    if val_fraction > 0:
        n_val = max(1, round(len(train) * val_fraction))
        if n_val >= len(train):
            raise UserError(f"data.val_fraction={val_fraction} leaves no training images out of {len(train)}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        val, train = train.take(order[:n_val].sort().values), train.take(order[n_val:].sort().values)
    info = raw.info
    if isinstance(train, TensorSplit):  # streamed datasets keep the statistics their builder declares
        mean, std = channel_stats(train.images)
        info = dataclasses.replace(info, mean=mean, std=std)
    return Datasets(train=train, val=val, test=raw.test, info=info)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units (uint8 images are divided by 255), in float64, chunk by chunk so
    that a large float split is never copied whole."""
    C = images.shape[1]
    total = torch.zeros(C, dtype=torch.float64)
    squares = torch.zeros(C, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].double().transpose(0, 1).reshape(C, -1)  # (C, n * H * W)
        if images.dtype == torch.uint8:
            x /= 255
        total += x.sum(1)
        squares += x.square().sum(1)
    count = images[:1, 0].numel() * len(images)
    mean = total / count
    std = ((squares / count - mean.square()) * count / max(1, count - 1)).clamp_min(0).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.clamp_min(1e-3).tolist())
