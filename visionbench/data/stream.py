"""A loader whose images pass through DataLoader workers. For datasets streamed from disk (Pascal VOC, image
folders, CSV manifests) the workers decode, resize and (when training) crop and colour-jitter each image; the device
then normalises and applies the batched augmentations the in-memory loader uses (flips, rotations, translation,
cutout, random erasing). Training with per-image augmentations that have no batched equivalent (timm's auto_augment:
RandAugment and kin) also goes through here, for in-memory datasets too: the workers run timm's create_transform,
which normalises, and the device adds its batched augmentations.

Same contract as `DeviceLoader`: `epoch(e, start_batch)` yields (images, targets) on the device, and everything
random in epoch `e` is a pure function of (seed, e). The order and the device-side parameters come from the same
`epoch_plan`; each image's worker-side transforms draw from a generator seeded by (seed, epoch, index). So the
batches do not depend on the number of workers, and resuming mid-epoch means skipping batches.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import stat
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from visionbench.config import AugmentConfig
from visionbench.data.base import DatasetInfo, FileSplit, TensorSplit
from visionbench.data.loader import (
    CROP_RATIO,
    LoaderSpec,
    batch_slice,
    check_shard,
    epoch_plan,
    finish_batch,
    num_batches,
)
from visionbench.errors import UserError, first_line
from visionbench.utils.bounded import MAX_IMAGE_ELEMENTS, read_npy_header

NO_SEED = -1  # worker-side transforms off (evaluation)
log = logging.getLogger(__name__)


# Pillow's grey conversion ("L", ITU-R 601-2 luma), applied to float arrays the same way
LUMA = (0.299, 0.587, 0.114)
_logged: set[tuple[str, str]] = set()


def max_pixels() -> int:
    """Pillow's limit (MAX_IMAGE_ELEMENTS by default, a 0.25 GiB 24-bit image, or what the user set), also for
    `.npy` arrays: beyond it Pillow only warns of a decompression bomb, and refuses at twice it. We refuse from the
    limit itself: the models here take a few hundred pixels a side, and a worker decoding such a file per sample
    exhausts memory before any resize."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS or MAX_IMAGE_ELEMENTS


def decode_image(path: str, grayscale: bool = False) -> torch.Tensor:
    """A file as a (C, H, W) tensor on the scale of 8-bit images: uint8 grey levels for 8-bit sources (the formats
    Pillow reads as 8-bit, and uint8 or bool `.npy` arrays), float32 in [0, 1] for deeper ones (16-bit PNG/TIFF/PGM,
    Pillow's float mode, `.npy` arrays of wider unsigned integers divided by their dtype's maximum, float arrays
    already in [0, 1]). `transforms.normalize` divides uint8 by 255 and takes floats as they are, so a file gives
    the same values whatever its bit depth. Signed integers (no defined range), floats outside [0, 1] and images
    over `max_pixels()` are refused naming the file. `.npy` arrays have shape (H, W) or (C, H, W) and are read
    without pickle; PIL images have 3 channels, or 1 when `grayscale` (arrays: Pillow's luma weights).

    Pillow rather than torchvision.io, whose decoders are deprecated from torchvision 0.29 on (in favour of
    torchcodec, one more dependency); Pillow ships with torchvision anyway.

    Raises:
        UserError: not a regular file, undecodable, too large, or values without a known range.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise UserError(f"{path}: cannot read the image ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file; expected an image file")
    if path.lower().endswith(".npy"):  # as image folders list them, whatever the case
        x = _unit_scale(_read_npy(path), path)
        if grayscale and x.shape[0] == 3:
            x = _grey(x)
        return x
    return _decode_pil(path, grayscale)


def _read_npy(path: str) -> np.ndarray:
    """The array of a `.npy` file, memory-mapped, after its header is checked: a numeric dtype, (H, W) or (C, H, W)
    with 1 or 3 channels, at most `max_pixels()` pixels and as many bytes in the file as the header claims (a
    sparse file may claim gigabytes in a few kilobytes)."""
    try:
        with open(path, "rb") as f:
            shape, _, dtype = read_npy_header(f)
            offset, size = f.tell(), os.fstat(f.fileno()).st_size
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UserError(f"{path}: cannot read as a numpy array ({first_line(e)})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise UserError(f"{path}: an array of {dtype}; expected real numbers (bool, integer or float)")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] not in (1, 3)):
        raise UserError(f"{path}: expected an array of shape (H, W) or (C, H, W) with 1 or 3 channels, got {shape}")
    pixels = int(np.prod(shape[-2:], dtype=object))
    if pixels == 0:
        raise UserError(f"{path}: an empty array of shape {shape}; expected an image")
    if pixels > max_pixels():
        raise UserError(
            f"{path}: an array of shape {shape}, {pixels} pixels, more than Pillow's decompression-bomb limit of "
            f"{max_pixels()}; refused"
        )
    needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size < needed:
        raise UserError(f"{path}: truncated ({size} bytes; its header claims {needed}, an array of shape {shape})")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read as a numpy array ({first_line(e)})") from None
    if array.shape != shape or array.dtype != dtype:  # replaced since the header was read
        raise UserError(f"{path}: changed while it was read")
    return array if array.ndim == 3 else array[None]


def _unit_scale(array: np.ndarray, path: str) -> torch.Tensor:
    """(C, H, W) pixel values as uint8 (8-bit and bool) or float32 in [0, 1]; see `decode_image`."""
    kind = array.dtype.kind
    if kind == "b":
        return torch.from_numpy(np.asarray(array, dtype=np.uint8) * np.uint8(255))
    if array.dtype == np.uint8:
        return torch.from_numpy(np.array(array))
    if kind == "u":  # 16-bit and wider: the full range of the dtype, as an 8-bit image's is 0-255
        # 16-bit values are exact in float32, so v * 257 / 65535 rounds exactly as normalize's v / 255 of the 8-bit
        # image does; wider ones go through float64
        wide = np.float32 if array.dtype.itemsize <= 2 else np.float64
        return torch.from_numpy((np.asarray(array, dtype=wide) / wide(np.iinfo(array.dtype).max)).astype(np.float32))
    if kind == "i":
        raise UserError(
            f"{path}: signed integer pixels ({array.dtype}) have no defined range; save images as uint8 (0-255), "
            "uint16 (0-65535) or float in [0, 1]"
        )
    x = np.array(array, dtype=np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{path}: holds NaN or infinite values; expected finite pixel values")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise UserError(
            f"{path}: float pixel values from {low:.4g} to {high:.4g}; expected floats in [0, 1] "
            "(or uint8 0-255, uint16 0-65535)"
        )
    return torch.from_numpy(x)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) array as one channel with Pillow's luma weights (for uint8, Pillow's own integer conversion)."""
    from PIL import Image

    if x.dtype == torch.uint8:
        grey = Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).numpy())).convert("L")
        return torch.from_numpy(np.array(grey))[None]
    return sum(w * c for w, c in zip(LUMA, x, strict=True))[None].float()


def _decode_pil(path: str, grayscale: bool) -> torch.Tensor:
    """An image file through Pillow (see `decode_image`). Pillow's warnings become part of our answer: a
    decompression bomb is refused, and any other warning is logged once, naming the file."""
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels():
                    raise UserError(
                        f"{path}: {width}x{height} pixels, more than Pillow's decompression-bomb limit of "
                        f"{max_pixels()}; refused (resize the image first)"
                    )
                x = _pil_pixels(img, path, grayscale)
        except UserError:
            raise
        except Image.DecompressionBombError:
            raise UserError(
                f"{path}: more pixels than Pillow's decompression-bomb limit of {max_pixels()}; refused "
                "(resize the image first)"
            ) from None
        except Exception as e:  # noqa: BLE001  (Pillow's parsers raise many types on a bad file: all mean the same)
            raise UserError(f"{path}: cannot decode the image ({first_line(e) or type(e).__name__})") from None
    for w in caught:
        key = (path, first_line(w.message))
        if key not in _logged:  # once per file and process, not every epoch
            _logged.add(key)
            log.warning("%s: %s", *key)
    return x


# Pillow modes of more than 8 bits per pixel whose values have a known full scale
_DEEP_MODES = {"I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16}


def _pil_pixels(img, path: str, grayscale: bool) -> torch.Tensor:
    channels = 1 if grayscale else 3
    if img.mode in _DEEP_MODES or img.mode in ("I", "F"):
        array = np.asarray(img)
        if img.mode == "I":  # 32-bit signed: only PNG and PGM/PPM put 16-bit data here, scaled to 0-65535
            if img.format not in ("PNG", "PPM") or array.min() < 0 or array.max() > 65535:
                raise UserError(
                    f"{path}: 32-bit integer pixels ({img.format} mode I) have no defined range; save it as "
                    "8- or 16-bit"
                )
            array = array.astype(np.uint16)
        else:
            array = array.astype(array.dtype.newbyteorder("="))
        x = _unit_scale(array[None], path)
        return x.expand(channels, -1, -1) if channels == 3 else x
    if img.mode == "PA" or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")  # the palette's colours; the alpha channel is dropped below, as for RGBA
    array = np.asarray(img.convert("L" if grayscale else "RGB"))
    x = torch.from_numpy(array.copy())
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def needs_worker_transform(augment: AugmentConfig | None) -> bool:
    """Whether training runs per-image augmentations with no batched equivalent (timm's, in the workers)."""
    if augment is None:
        return False
    return bool(augment.auto_augment or (augment.random_erasing and augment.random_erasing_on == "workers"))


def worker_transform(
    augment: AugmentConfig | None,
    channels: int,
    size: tuple[int, int],
    mean,
    std,
    interpolation: str = "bilinear",
    crop: bool = False,
):
    """timm's create_transform for the per-image augmentations (auto_augment, and random erasing when it runs in
    the workers), or None when there are none. Its flips are off and its random crop is the whole image, resized to
    `size`, unless `crop` (an in-memory image, not cropped before): then it is augment.random_resized_crop with
    torchvision's aspect range. Other resizing, cropping and flipping stay where they were (v2 in the workers,
    batched on the device). It ends with ToTensor and Normalize, so the device does not normalise these batches
    again."""
    if not needs_worker_transform(augment):
        return None
    from timm.data import create_transform

    erase = augment.random_erasing if augment.random_erasing_on == "workers" else 0.0
    spec = augment.auto_augment
    if spec is not None and not re.fullmatch(r"[a-z0-9]+(-[a-z]+[0-9.]+)*", spec):  # timm skips such sections
        raise UserError(
            f"data.augment.auto_augment: {spec!r} is not a timm auto_augment spec (expected e.g. "
            "'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2' or 'original')"
        )
    crop = crop and augment.random_resized_crop is not None
    try:
        return create_transform(
            input_size=(channels, *size),
            is_training=True,
            scale=tuple(augment.random_resized_crop) if crop else (1.0, 1.0),
            ratio=CROP_RATIO if crop else (1.0, 1.0),
            hflip=0.0,
            vflip=0.0,
            color_jitter=None,
            auto_augment=augment.auto_augment,
            interpolation=interpolation,
            mean=tuple(mean),
            std=tuple(std),
            re_prob=erase,
            re_mode="pixel",
        )
    except Exception as e:  # timm asserts on a spec it cannot parse
        raise UserError(
            f"data.augment.auto_augment: {augment.auto_augment!r} is not a timm auto_augment spec (expected e.g. "
            f"'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2' or 'original'; {first_line(e) or type(e).__name__})"
        ) from None


def _seed_sample(seed: int) -> None:
    """Seed every generator a per-image transform may draw from: torch (v2), Python's and numpy's (timm)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # NOTE: each worker owns its generators


def _finish(transform, image: torch.Tensor, where: str) -> torch.Tensor:
    """The worker transform on a uint8 (C, H, W) image, through PIL as timm's transforms expect."""
    if image.dtype != torch.uint8:
        raise UserError(f"data.augment.auto_augment: needs 8-bit images; {where} holds {image.dtype} values")
    from torchvision.transforms.functional import to_pil_image

    return transform(to_pil_image(image))


class TensorItems(Dataset):
    """Items are (index, sample_seed) pairs of an in-memory split; returns the image through the worker transform."""

    def __init__(self, split: TensorSplit, transform) -> None:
        self.images, self.targets, self.transform = split.images, split.targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        _seed_sample(seed)
        return _finish(self.transform, self.images[index], "the dataset"), self.targets[index]


def resize_ops(size: tuple[int, int], interpolation: str = "bilinear", crop_pct: float | None = None) -> list:
    """torchvision v2 ops that bring one decoded image to `size` (H, W) for evaluation (and for training without a
    random resized crop): resized to it; with `crop_pct`, timm's eval transform of a square size (shorter side
    resized to floor(H / crop_pct), centre crop). The streaming loader's and predict's resize."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode(interpolation)
    if crop_pct is None:
        return [v2.Resize(list(size), interpolation=mode, antialias=True)]
    return [v2.Resize(math.floor(size[0] / crop_pct), interpolation=mode, antialias=True), v2.CenterCrop(list(size))]


class FileDataset(Dataset):
    """Items are (index, sample_seed) pairs; returns the decoded, resized (and, with a seed, augmented) image.
    `interpolation` and `eval_crop_pct` are `data.interpolation` and `data.eval_crop_pct` (`resize_ops`)."""

    def __init__(
        self,
        split: FileSplit,
        size: int,
        grayscale: bool,
        augment: AugmentConfig | None,
        finish=None,
        interpolation: str = "bilinear",
        eval_crop_pct: float | None = None,
    ) -> None:
        self.paths, self.targets = split.paths, split.targets
        self.size, self.grayscale, self.augment, self.finish = size, grayscale, augment, finish
        self.interpolation, self.eval_crop_pct = interpolation, eval_crop_pct
        self._train_tf = self._eval_tf = None

    def _transforms(self, train: bool):
        from torchvision.transforms import v2

        if train and self.augment is not None and self.augment.random_resized_crop:
            scale, mode = tuple(self.augment.random_resized_crop), v2.InterpolationMode(self.interpolation)
            ops = [v2.RandomResizedCrop(self.size, scale=scale, ratio=CROP_RATIO, interpolation=mode, antialias=True)]
        else:
            ops = resize_ops((self.size, self.size), self.interpolation, None if train else self.eval_crop_pct)
        if train and self.augment is not None and self.augment.color_jitter:
            s = self.augment.color_jitter
            ops.append(v2.ColorJitter(brightness=s, contrast=s, saturation=0.0 if self.grayscale else s))
        return v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        image = _channels(
            decode_image(self.paths[index], self.grayscale), 1 if self.grayscale else 3, self.paths[index]
        )
        if seed == NO_SEED:
            self._eval_tf = self._eval_tf or self._transforms(False)
            image = self._eval_tf(image)
        else:
            self._train_tf = self._train_tf or self._transforms(True)
            _seed_sample(seed)
            image = self._train_tf(image)
            if self.finish is not None:
                image = _finish(self.finish, image, self.paths[index])
        return image, self.targets[index]


def _channels(image: torch.Tensor, channels: int, path: str) -> torch.Tensor:
    """`image` with the dataset's channel count: a grey `.npy` array repeated to RGB, as Pillow's convert("RGB")
    does for a grey PNG; any other count (a 2- or 4-channel array) is a UserError rather than a failed batch."""
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1)
    raise UserError(
        f"{path}: an array of {image.shape[0]} channels; this dataset decodes images as {channels} "
        f"(data.grayscale: {str(channels == 1).lower()})"
    )


class _PlanSampler(Sampler):
    """Batches of (index, sample_seed) for the epoch and start batch set before each iteration."""

    def __init__(self, n: int, batch_size: int, train: bool, seed: int, shard: tuple[int, int] = (0, 1)) -> None:
        self.n, self.batch_size, self.train, self.seed, self.shard = n, batch_size, train, seed, shard
        self.order: torch.Tensor | None = None
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.train, self.shard)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for i in range(self.start_batch, len(self)):
            sl = batch_slice(i, self.batch_size, self.n, self.train, self.shard)
            if self.order is None:
                yield [(j, NO_SEED) for j in range(sl.start, sl.stop)]
            else:
                yield [(j, (base + j) % (2**62)) for j in self.order[sl].tolist()]


class StreamLoader:
    """Batches prepared by DataLoader workers: float32 normalised images and targets on `device`.

    A FileSplit's images are decoded and resized in the workers; a TensorSplit (an in-memory dataset whose training
    uses per-image augmentations, see `worker_transform`) is indexed there.

    Args:
        split: file paths and targets, or in-memory images and targets.
        info: mean and std for normalisation (ImageNet's for the file datasets).
        device: where batches are produced.
        spec: batch size, training or not, seed, memory format and DDP shard (`loader.LoaderSpec`).
        augment: augmentation settings (used only when `spec.train`).
        image_size: side of the square images after resizing.
        grayscale: decode as one channel.
        num_workers: DataLoader worker processes (0 decodes in this process).
        interpolation: of every resize (`data.interpolation`).
        eval_crop_pct: evaluation images as timm's crop_pct makes them (`data.eval_crop_pct`); None: resized.
    """

    def __init__(
        self,
        split: FileSplit | TensorSplit,
        info: DatasetInfo,
        device: torch.device,
        spec: LoaderSpec,
        augment: AugmentConfig | None = None,
        image_size: int = 224,
        grayscale: bool = False,
        num_workers: int | None = None,
        interpolation: str = "bilinear",
        eval_crop_pct: float | None = None,
    ) -> None:
        train, seed, shard = spec.train, spec.seed, spec.shard
        self.split, self.device, self.train, self.seed = split, device, train, seed
        self.augment = augment if train else None
        self.image_size, self.channels_last = image_size, spec.channels_last
        self.batch_size = min(spec.batch_size, len(split)) if train else spec.batch_size
        mean, std = info.mean, info.std
        if grayscale and len(mean) > 1:  # ImageNet statistics of a grey image: the channel average
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        self.mean, self.std = torch.tensor(mean, device=device), torch.tensor(std, device=device)
        self.shard = check_shard(self.batch_size, shard, train)
        self.sampler = _PlanSampler(len(split), self.batch_size, train, seed, self.shard)
        workers = default_workers() if num_workers is None else num_workers
        channels = info.input_size[0] if isinstance(split, TensorSplit) else (1 if grayscale else 3)
        in_memory = isinstance(split, TensorSplit)
        size = (image_size, image_size)
        finish = worker_transform(self.augment, channels, size, mean, std, interpolation, crop=in_memory)
        self.normalized = finish is not None  # the workers' timm transform ends with Normalize
        if in_memory:
            dataset = TensorItems(split, finish)
        else:
            sizing = {"interpolation": interpolation, "eval_crop_pct": eval_crop_pct}
            dataset = FileDataset(split, image_size, grayscale, self.augment, finish, **sizing)
        self.dataloader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            collate_fn=_collate,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of `epoch`, beginning at batch index `start_batch`."""
        n, size = len(self.split), self.image_size
        params = epoch_plan(self.seed, epoch, n, self.augment, size, size) if self.train else {}
        self.sampler.order = params.pop("order", None)
        self.sampler.epoch, self.sampler.start_batch = epoch, start_batch
        params = {k: v.to(self.device) for k, v in params.items()}
        batches = iter(self.dataloader)
        for i in range(start_batch, len(self)):
            try:
                images, targets = next(batches)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001  (a worker's error arrives wrapped in a multi-line message)
                raise _worker_error(e) from None
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            sl = batch_slice(i, self.batch_size, n, self.train, self.shard)
            part = {k: v[sl] for k, v in params.items()}
            yield finish_batch(self, images, part, epoch, i, normalized=self.normalized), targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """default_collate, except that a batch mixing 8-bit (uint8) and deeper (float, [0, 1]) images is made all
    float in [0, 1], as `transforms.normalize` would scale each: stacking would promote uint8 without dividing."""
    if len({image.dtype for image, _ in batch}) > 1:
        batch = [(image.float().div_(255) if image.dtype == torch.uint8 else image, y) for image, y in batch]
    return default_collate(batch)


def default_workers() -> int:
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _worker_error(e: Exception) -> Exception:
    """A UserError raised in a worker, as one line again; anything else is a bug and keeps its traceback."""
    text = str(e)
    marker = "UserError: "
    if isinstance(e, UserError) or marker in text:
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        return UserError(last.split(marker, 1)[1] if marker in last else last)
    return e
