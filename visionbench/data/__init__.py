"""Datasets: importing this package registers every family in DATASETS."""

import dataclasses
import inspect

import torch

from visionbench.data import cifar, deeplense, digits, folder, mnist, mosaic, synthetic, voc  # noqa: F401  (registration)
from visionbench.data.base import DatasetInfo, Datasets, FileSplit, RawDataset, TensorSplit, carve, resize_split
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
    "TensorSplit",
    "augment_placement",
    "build_datasets",
    "build_loader",
    "carve",
]

DEFAULT_IMAGE_SIZE = 224
STREAM_AUGMENTS = ("random_resized_crop", "color_jitter")  # v2, in the workers, streamed datasets only


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
    if data.streamed:
        size = cfg.image_size or DEFAULT_IMAGE_SIZE
        data.info = dataclasses.replace(data.info, input_size=(1 if cfg.grayscale else 3, size, size))
    else:
        if cfg.grayscale:
            raise UserError(f"data.grayscale applies to datasets streamed from disk; {cfg.name!r} is held in memory")
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
                    f"(use translate_pixels, flips and rotations)"
                )
    _, H, W = data.info.input_size
    if cfg.augment.rot90 and H != W:
        raise UserError(f"data.augment.rot90 needs square images; {cfg.name!r} images are {H}x{W}")
    return data


def _load(cfg) -> RawDataset:
    """The builder's official splits, resized once here when held in memory and data.image_size asks for it."""
    builder = DATASETS.get(cfg.name)
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in (("root", cfg.root), ("download", cfg.download)) if k in accepted}
    try:
        raw = builder(**kwargs, **cfg.kwargs)
    except TypeError as e:
        raise UserError(f"data.kwargs for {cfg.name!r}: {e}") from None
    if cfg.image_size and isinstance(raw.train, TensorSplit):  # in memory: resized once, here
        size = cfg.image_size
        raw = RawDataset(
            train=resize_split(raw.train, size),
            test=resize_split(raw.test, size),
            info=dataclasses.replace(raw.info, input_size=(raw.info.input_size[0], size, size)),
        )
    return raw


def build_loader(data: Datasets, split: str, cfg, device: torch.device, spec: LoaderSpec):
    """The loader of one split as `spec` says: a DeviceLoader for in-memory datasets, a StreamLoader for streamed
    ones (or for augmentations that run per image in workers); `cfg` is the DataConfig (augmentation, workers)."""
    augment = cfg.augment if spec.train else None
    if not data.streamed and not needs_worker_transform(augment):
        return DeviceLoader(data.split(split), data.info, device, spec, augment)
    from visionbench.data.stream import StreamLoader

    stream = {"image_size": data.info.input_size[-1], "grayscale": cfg.grayscale, "num_workers": cfg.num_workers}
    return StreamLoader(data.split(split), data.info, device, spec, augment, **stream)


def augment_placement(augment) -> dict[str, list[str]]:
    """The training augmentations in use and where they run: batched on the device, or per image in workers."""
    from visionbench.config import AugmentConfig

    default = AugmentConfig()
    settings = ("flip_mode", "mix_prob", "mix_switch_prob", "random_erasing_on")  # modify others
    active = [k for k in AugmentConfig.model_fields if k not in settings and getattr(augment, k) != getattr(default, k)]
    in_workers = set(STREAM_AUGMENTS) | {"auto_augment"}
    if augment.random_erasing_on == "workers":
        in_workers.add("random_erasing")
    return {"device": [k for k in active if k not in in_workers], "workers": [k for k in active if k in in_workers]}
