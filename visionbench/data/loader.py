"""A loader for datasets held whole on the training device (airbench's way; no DataLoader workers).

The images stay uint8 on the device. Each epoch draws, from a generator seeded by (seed, epoch), one permutation
and every image's augmentation parameters at once; batches are then slices of those. The order and the
augmentation of epoch `e` are therefore a pure function of (seed, e): resuming mid-epoch means skipping batches.

Images stored smaller than the run's input size (`data.image_size`) are enlarged batch by batch on the device,
never as a whole split: a random resized crop resamples each image's box straight to the input size, otherwise
training batches are resized and evaluation batches get timm's crop_pct view (`transforms.eval_resize`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Literal

import torch

from visionbench.config import AugmentConfig
from visionbench.data import transforms
from visionbench.data.base import DatasetInfo, TensorSplit
from visionbench.errors import UserError


@dataclasses.dataclass(frozen=True)
class LoaderSpec:
    """How a split is served, whatever the loader: `build_loader`'s choices besides the data and the device.

    Args:
        batch_size: images per batch (the global batch under DDP).
        train: shuffle, augment and drop the last incomplete batch.
        seed: with the epoch number, fixes the order and the augmentation.
        channels_last: emit channels_last batches (CUDA convolutions prefer it).
        shard: (rank, world size) under DDP: see `batch_slice`.
    """

    batch_size: int
    train: bool = False
    seed: int = 0
    channels_last: bool = False
    shard: tuple[int, int] = (0, 1)


class DeviceLoader:
    """Batches of a TensorSplit held on `device`: float32 normalised images and targets.

    Args:
        split: the images (uint8) and targets.
        info: mean and std for normalisation; its input size is the batches' size (the images are resized to it
            batch by batch when stored at another size).
        device: where the data lives and batches are produced.
        spec: batch size, training or not, seed, memory format and DDP shard (`LoaderSpec`).
        augment: augmentation settings (used only when `spec.train`).
        interpolation: of every resize, `bilinear` or `bicubic` (`data.interpolation`).
        eval_crop_pct: evaluation batches as timm's crop_pct makes them (`data.eval_crop_pct`); None: resized.
    """

    def __init__(
        self,
        split: TensorSplit,
        info: DatasetInfo,
        device: torch.device,
        spec: LoaderSpec,
        augment: AugmentConfig | None = None,
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        eval_crop_pct: float | None = None,
    ) -> None:
        self.images = split.images.to(device, non_blocking=True)
        self.targets = split.targets.to(device, non_blocking=True)
        self.size = tuple(info.input_size[1:])
        self.interpolation, self.eval_crop_pct = interpolation, eval_crop_pct
        self.mean = torch.tensor(info.mean, device=device)
        self.std = torch.tensor(info.std, device=device)
        self.batch_size, self.device, self.train, self.seed = spec.batch_size, device, spec.train, spec.seed
        self.augment = augment if spec.train else None
        self.channels_last = spec.channels_last
        if spec.train and len(self.images) < spec.batch_size:
            self.batch_size = len(self.images)  # a tiny subset still trains: one full batch per epoch
        self.shard = check_shard(self.batch_size, spec.shard, spec.train)

    def __len__(self) -> int:
        return num_batches(len(self.images), self.batch_size, self.train, self.shard)

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of `epoch`, beginning at batch index `start_batch`."""
        n = len(self.images)
        params = self._epoch_params(epoch, n) if self.train else None
        order = params.pop("order") if params else None
        for i in range(start_batch, len(self)):
            sl = batch_slice(i, self.batch_size, n, self.train, self.shard)
            index = order[sl] if order is not None else sl
            part = {k: v[sl] for k, v in (params or {}).items()}
            images = self._sized(self.images[index], part)
            yield finish_batch(self, images, part, epoch, i), self.targets[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    def _epoch_params(self, epoch: int, n: int) -> dict[str, torch.Tensor]:
        H, W = self.size
        stored = tuple(self.images.shape[-2:])
        plan = epoch_plan(self.seed, epoch, n, self.augment, H, W, stored=stored)
        return {k: v.to(self.device) for k, v in plan.items()}

    def _sized(self, images: torch.Tensor, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """A batch at the loader's size: its random resized crops, else resized (training) or timm's crop_pct view
        (evaluation); unchanged when stored at that size and nothing asks for more."""
        if "crop_top" in part:
            boxes = {k: part[f"crop_{k}"] for k in ("top", "left", "height", "width")}
            return transforms.resized_crop(images, boxes, self.size, self.interpolation)
        if not self.train and self.eval_crop_pct is not None:
            return transforms.eval_resize(images, self.size[0], self.interpolation, self.eval_crop_pct)
        return transforms.resize(images, self.size, self.interpolation)


def finish_batch(loader, images: torch.Tensor, part: dict[str, torch.Tensor], epoch: int, i: int, normalized=False):
    """What every loader does to batch `i` of `epoch` on the device: the augmentations of `part` (the batch's slice
    of an `epoch_plan`), normalisation unless the workers did it, random erasing, then the memory format."""
    if part:
        images = apply_augment(images, part, loader.augment)
    x = images if normalized else transforms.normalize(images, loader.mean, loader.std)
    if "erase" in part:
        x = erase_batch(x, part, loader.seed, epoch, i)
    if loader.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def check_shard(batch_size: int, shard: tuple[int, int], train: bool) -> tuple[int, int]:
    """A (rank, world) pair whose world divides the global training batch."""
    rank, world = shard
    if train and batch_size % world:
        raise UserError(f"trainer.batch_size: {batch_size} is the global batch; it must divide among {world} processes")
    return rank, world


def shard_range(n: int, shard: tuple[int, int]) -> tuple[int, int]:
    """This rank's contiguous part of an evaluation split: ceil(n / world) images (the last rank fewer)."""
    rank, world = shard
    per = math.ceil(n / world)
    return min(n, rank * per), min(n, (rank + 1) * per)


def num_batches(n: int, batch_size: int, train: bool, shard: tuple[int, int] = (0, 1)) -> int:
    """Batches of an epoch for this rank: every rank sees all n // batch_size global training batches."""
    if train:
        return n // batch_size
    lo, hi = shard_range(n, shard)
    return math.ceil((hi - lo) / batch_size)


def batch_slice(i: int, batch_size: int, n: int, train: bool, shard: tuple[int, int] = (0, 1)) -> slice:
    """Positions of batch `i` for this rank: in training, of the epoch's order (rank r of W takes the r-th
    W-th of global batch i, so the W ranks together see exactly the one-process batch and its augmentation); in
    evaluation, of the split (each rank its contiguous part, `shard_range`)."""
    rank, world = shard
    if train:
        per = batch_size // world
        start = i * batch_size + rank * per
        return slice(start, start + per)
    lo, hi = shard_range(n, shard)
    return slice(lo + i * batch_size, min(hi, lo + (i + 1) * batch_size))


AUGMENT_KEYS = ("flip", "vflip", "rot90", "angle", "dx", "dy", "cy", "cx")
CROP_KEYS = ("crop_top", "crop_left", "crop_height", "crop_width")  # in-memory random resized crops
ERASE_KEYS = ("erase", "erase_area", "erase_aspect", "erase_y", "erase_x")


def epoch_plan(
    seed: int, epoch: int, n: int, aug: AugmentConfig | None, H: int, W: int, stored: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """The order of epoch `epoch` and every image's augmentation parameters, on the CPU, for batches of H x W.

    Returns `order` (n,) and, for each enabled augmentation, one value per position of the shuffled order, so
    batch i uses `[i * batch_size : (i + 1) * batch_size]` of every entry. `stored`: the (H, W) of images held in
    memory, whose random resized crops are drawn here (streamed images are cropped in the workers).
    """
    # NOTE: a CPU generator for the draws, then one copy to the device: the same numbers on every device, and
    # only a few numbers per image.
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    params = {"order": torch.randperm(n, generator=g)}
    if aug is not None:
        if aug.flip and aug.flip_mode == "random":
            params["flip"] = torch.rand(n, generator=g) < 0.5
        if aug.flip and aug.flip_mode == "alternate":
            # airbench's alternating flip: a fixed random half flips on even epochs, the other half on odd
            base = torch.rand(n, generator=torch.Generator().manual_seed(seed * 1_000_003 - 1)) < 0.5
            params["flip"] = base ^ bool(epoch % 2)
        if aug.translate_pixels:
            p = aug.translate_pixels
            params["dx"] = torch.randint(-p, p + 1, (n,), generator=g)
            params["dy"] = torch.randint(-p, p + 1, (n,), generator=g)
        if aug.cutout_pixels:
            params["cy"] = torch.randint(0, H, (n,), generator=g)
            params["cx"] = torch.randint(0, W, (n,), generator=g)
        # drawn after the older augmentations so that their draws (and the golden runs) stay as they were
        if aug.vflip:
            params["vflip"] = torch.rand(n, generator=g) < 0.5
        if aug.rot90:
            params["rot90"] = torch.randint(0, 4, (n,), generator=g)
        if aug.rotate_degrees:
            params["angle"] = (torch.rand(n, generator=g) * 2 - 1) * aug.rotate_degrees
        if aug.random_erasing and aug.random_erasing_on == "device":
            lo, hi = transforms.ERASE_LOG_ASPECT
            params["erase"] = torch.rand(n, generator=g) < aug.random_erasing
            params["erase_area"] = torch.empty(n).uniform_(*transforms.ERASE_AREA, generator=g)
            params["erase_aspect"] = torch.empty(n).uniform_(lo, hi, generator=g)
            params["erase_y"], params["erase_x"] = torch.rand(n, generator=g), torch.rand(n, generator=g)
        if aug.random_resized_crop and stored is not None:
            params.update(crop_boxes(n, stored, aug.random_resized_crop, g))
        for key in AUGMENT_KEYS + ERASE_KEYS + CROP_KEYS:  # per-image params follow the shuffled order
            if key in params:
                params[key] = params[key][params["order"]]
    return params


CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop aspect range
CROP_ATTEMPTS = 10  # torchvision's draws before it falls back to the central crop


def crop_boxes(n: int, stored: tuple[int, int], scale: list[float], g: torch.Generator) -> dict[str, torch.Tensor]:
    """torchvision's `RandomResizedCrop.get_params` for n images of size `stored` at once: per image up to ten
    (area fraction in `scale`, log-uniform aspect in CROP_RATIO) draws, the first box that fits, placed uniformly;
    where none fits, torchvision's fallback (the whole image, or its centre clipped to CROP_RATIO)."""
    H, W = stored
    area = torch.empty(n, CROP_ATTEMPTS).uniform_(scale[0], scale[1], generator=g) * (H * W)
    aspect = torch.empty(n, CROP_ATTEMPTS).uniform_(*(math.log(r) for r in CROP_RATIO), generator=g).exp_()
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits (0 when none does)
    fw, fh = W, H  # torchvision's fallback for an image whose aspect lies within the range
    if W / H < CROP_RATIO[0]:
        fh = round(W / CROP_RATIO[0])
    elif W / H > CROP_RATIO[1]:
        fw = round(H * CROP_RATIO[1])
    found = fits.any(1)
    w = torch.where(found, w.gather(1, first)[:, 0], fw).long()
    h = torch.where(found, h.gather(1, first)[:, 0], fh).long()
    u_top, u_left = torch.rand(n, generator=g), torch.rand(n, generator=g)
    top = torch.where(found, (u_top * (H - h + 1)).long(), (H - h) // 2)
    left = torch.where(found, (u_left * (W - w + 1)).long(), (W - w) // 2)
    return {"crop_top": top, "crop_left": left, "crop_height": h, "crop_width": w}


def erase_batch(x: torch.Tensor, p: dict[str, torch.Tensor], seed: int, epoch: int, batch: int) -> torch.Tensor:
    """Random erasing of normalised batch `batch` of `epoch` with its slice of an `epoch_plan`; the noise comes
    from a generator on the batch's device seeded by (seed, epoch, batch), so a resumed epoch repeats it."""
    g = torch.Generator(device=x.device).manual_seed((seed * 1_000_003 + epoch) * 100_003 + batch + 1)
    return transforms.random_erasing(x, p, g)


def apply_augment(images: torch.Tensor, p: dict[str, torch.Tensor], aug: AugmentConfig) -> torch.Tensor:
    """Augment a batch with its slice of an `epoch_plan`: translate, flips, rotations, then cutout (random erasing,
    which works on normalised images, is `erase_batch`'s)."""
    if "dx" in p:
        images = transforms.translate(images, p["dx"], p["dy"], aug.translate_pixels, aug.pad_mode)
    if "flip" in p:
        images = transforms.flip(images, p["flip"])
    if "vflip" in p:
        images = transforms.vflip(images, p["vflip"])
    if "rot90" in p:
        images = transforms.rot90(images, p["rot90"])
    if "angle" in p:
        images = transforms.rotate(images, p["angle"])
    if "cy" in p:
        images = transforms.cutout(images, p["cy"], p["cx"], aug.cutout_pixels)
    return images
