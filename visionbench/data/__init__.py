"""Datasets: importing this package registers every family in DATASETS."""

import dataclasses
import inspect

import torch

from visionbench.data import cifar, deeplense, digits, folder, mnist, mosaic, synthetic, voc  # noqa: F401  (registration)
from visionbench.data.base import (
    DESCRIPTIONS,
    DatasetInfo,
    Datasets,
    FileSplit,
    RawDataset,
    StaticInfo,
    TensorSplit,
    carve,
    resize_split,
)
from visionbench.data.loader import DeviceLoader, LoaderSpec
from visionbench.data.stream import needs_worker_transform, worker_transform
from visionbench.errors import UserError, first_line
from visionbench.registry import DATASETS

DEFAULT_DATASET = "fashion-mnist"  # a config's data.name when it names none

__all__ = [
    "Datasets",
    "DatasetInfo",
    "FileSplit",
    "LoaderSpec",
    "RawDataset",
    "StaticInfo",
    "TensorSplit",
    "augment_placement",
    "build_datasets",
    "build_loader",
    "carve",
    "run_input_size",
    "static_info",
]

DEFAULT_IMAGE_SIZE = 224
STREAM_AUGMENTS = ("color_jitter",)  # v2, in the workers, streamed datasets only


def build_datasets(cfg) -> Datasets:
    """Build the dataset named by a DataConfig: official splits, subset, seeded validation split, statistics."""
    try:
        raw = _load(cfg)
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "allocate" not in str(e):  # torch's allocator: "can't allocate memory"
            raise
        raise UserError(
            f"data: {cfg.name!r} with data.kwargs {cfg.kwargs} and data.image_size {cfg.image_size} does not fit in "
            f"memory ({first_line(e)})"
        ) from None
    data = carve(raw, cfg.subset, cfg.val_fraction, cfg.split_seed)
    if cfg.test_subset is not None and cfg.test_subset < len(data.test):
        data.test = data.test.take(slice(0, cfg.test_subset))
    data.info = dataclasses.replace(data.info, input_size=run_input_size(cfg, data.info.input_size, data.streamed))
    if cfg.mean is not None or cfg.std is not None:
        data.info = dataclasses.replace(data.info, **_given_stats(cfg, data.info.input_size[0]))
    if not cfg.normalize:
        data.info = _unit_scale(cfg, data.info)
    if not data.streamed:
        if cfg.num_workers is not None and not needs_worker_transform(cfg.augment):
            raise UserError(
                f"data.num_workers: {cfg.name!r} is held in memory and uses workers only with per-image "
                "augmentations (data.augment.auto_augment, or random_erasing_on: workers)"
            )
        if needs_worker_transform(cfg.augment) and data.train.images.dtype != torch.uint8:
            raise UserError(
                f"data.augment.auto_augment / random_erasing_on: workers need 8-bit images; {cfg.name!r} images are "
                f"{data.train.images.dtype} (use the batched augmentations and random_erasing_on: device)"
            )
        info = data.info
        worker_transform(cfg.augment, info.input_size[0], info.input_size[1:], info.mean, info.std)  # checks the spec
        for key in STREAM_AUGMENTS:
            if getattr(cfg.augment, key):
                raise UserError(
                    f"data.augment.{key} applies to datasets streamed from disk; {cfg.name!r} is held in memory "
                    f"(use translate_pixels, random_resized_crop, flips and rotations)"
                )
    _, H, W = data.info.input_size
    if cfg.augment.rot90 and H != W:
        raise UserError(f"data.augment.rot90 needs square images; {cfg.name!r} images are {H}x{W}")
    return data


def run_input_size(cfg, native: tuple[int, int, int] | None, streamed: bool) -> tuple[int, int, int] | None:
    """The (C, H, W) a run's model takes, from the DataConfig `cfg` and the size the builder returns (`native`; None
    where unknown): a dataset streamed from disk is decoded at data.image_size (default DEFAULT_IMAGE_SIZE) in one
    channel with data.grayscale, else three; one held in memory keeps its channels and is resized to
    data.image_size when given.

    Raises:
        UserError: data.grayscale for a dataset held in memory.
    """
    if streamed:
        size = cfg.image_size or DEFAULT_IMAGE_SIZE
        return (1 if cfg.grayscale else 3, size, size)
    if cfg.grayscale:
        raise UserError(f"data.grayscale applies to datasets streamed from disk; {cfg.name!r} is held in memory")
    if cfg.image_size and native is not None:
        return (native[0], cfg.image_size, cfg.image_size)
    return native


def static_info(cfg) -> StaticInfo:
    """What the DataConfig `cfg` alone tells of its dataset (task, outputs, the run's input size), without reading an
    image: only a folder listing or a manifest where the outputs are in files. Where it knows a field,
    `build_datasets(cfg).info` has the same value (tests/data/test_registry_datasets.py holds them together).

    Raises:
        UserError: an unknown dataset, data.kwargs its builder does not take, or values the builder would refuse.
    """
    builder = DATASETS.get(cfg.name)
    description = DESCRIPTIONS[cfg.name]  # every registered dataset has one: a missing one is a bug
    signature = inspect.signature(builder)
    try:
        bound = signature.bind(**_path_args(cfg, signature.parameters), **cfg.kwargs)
        bound.apply_defaults()
        arguments = {}
        for name, value in bound.arguments.items():  # a builder's **kwargs are passed on by name
            arguments.update(
                value if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD else {name: value}
            )
        inspect.signature(description.describe).bind(**arguments)  # what a builder's **kwargs would refuse
    except TypeError as e:
        raise UserError(f"data.kwargs for {cfg.name!r}: {e}") from None
    info = description.describe(**arguments)
    return dataclasses.replace(info, input_size=run_input_size(cfg, info.input_size, description.streamed))


def _path_args(cfg, accepted) -> dict:
    """data.root and data.download, for a builder whose parameters (`accepted`) take them."""
    return {k: v for k, v in (("root", cfg.root), ("download", cfg.download)) if k in accepted}


def _unit_scale(cfg, info: DatasetInfo) -> DatasetInfo:
    """data.normalize: false: a mean of 0 and a std of 1 per channel, so that every consumer of the statistics (the
    loaders, predict, export's metadata, figures) scales images to [0, 1] only, as the run did."""
    if cfg.mean is not None or cfg.std is not None:
        raise UserError("data.normalize: false scales images to [0, 1] only; drop data.mean and data.std, or normalize")
    channels = info.input_size[0]
    return dataclasses.replace(info, mean=(0.0,) * channels, std=(1.0,) * channels)


def _given_stats(cfg, channels: int) -> dict[str, tuple[float, ...]]:
    """data.mean and data.std, both given, one value each or one per channel (one value stands for every channel)."""
    if cfg.mean is None or cfg.std is None:
        raise UserError("data.mean and data.std: give both or neither")
    stats, counts = {}, "1 value" if channels == 1 else f"1 or {channels} values"
    for key, values in (("mean", cfg.mean), ("std", cfg.std)):
        if len(values) not in (1, channels):
            raise UserError(
                f"data.{key}: expected {counts} ({cfg.name!r} images have {channels} channel"
                f"{'s' if channels != 1 else ''}), got {len(values)}"
            )
        stats[key] = tuple(values) * (channels if len(values) == 1 else 1)
    return stats


def _load(cfg) -> RawDataset:
    """The builder's official splits; held in memory, they are shrunk once here when data.image_size is smaller
    than the stored images, and kept as stored when it is larger: the loaders enlarge them batch by batch
    (`run_input_size` sets the info's size either way)."""
    builder = DATASETS.get(cfg.name)
    try:
        raw = builder(**_path_args(cfg, inspect.signature(builder).parameters), **cfg.kwargs)
    except TypeError as e:
        raise UserError(f"data.kwargs for {cfg.name!r}: {e}") from None
    if cfg.image_size and isinstance(raw.train, TensorSplit) and cfg.image_size <= min(raw.train.images.shape[-2:]):
        train, test = (resize_split(s, cfg.image_size, cfg.interpolation) for s in (raw.train, raw.test))
        raw = RawDataset(train, test, raw.info)
    return raw


def build_loader(data: Datasets, split: str, cfg, device: torch.device, spec: LoaderSpec):
    """The loader of one split as `spec` says: a DeviceLoader for in-memory datasets, a StreamLoader for streamed
    ones (or for augmentations that run per image in workers); `cfg` is the DataConfig (augmentation, workers)."""
    augment = cfg.augment if spec.train else None
    sizing = {"interpolation": cfg.interpolation, "eval_crop_pct": cfg.eval_crop_pct}
    if not data.streamed and not needs_worker_transform(augment):
        return DeviceLoader(data.split(split), data.info, device, spec, augment, **sizing)
    from visionbench.data.stream import StreamLoader

    stream = {"image_size": data.info.input_size[-1], "grayscale": cfg.grayscale, "num_workers": cfg.num_workers}
    return StreamLoader(data.split(split), data.info, device, spec, augment, **stream, **sizing)


def augment_placement(augment, streamed: bool = True) -> dict[str, list[str]]:
    """The training augmentations in use and where they run: batched on the device, or per image in workers (the
    random resized crop of a dataset held in memory runs on the device unless timm's per-image transform runs)."""
    from visionbench.config import AugmentConfig

    default = AugmentConfig()
    settings = ("flip_mode", "pad_mode", "mix_prob", "mix_switch_prob", "random_erasing_on")  # modify others
    active = [k for k in AugmentConfig.model_fields if k not in settings and getattr(augment, k) != getattr(default, k)]
    in_workers = set(STREAM_AUGMENTS) | {"auto_augment"}
    if streamed or needs_worker_transform(augment):
        in_workers.add("random_resized_crop")
    if augment.random_erasing_on == "workers":
        in_workers.add("random_erasing")
    return {"device": [k for k in active if k not in in_workers], "workers": [k for k in active if k in in_workers]}
