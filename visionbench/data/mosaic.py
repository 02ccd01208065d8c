"""`fashion-mnist-mosaic`: a multi-label benchmark that runs on a CPU in minutes.

Each sample is a 2×2 mosaic (56×56) of four Fashion-MNIST items; its target is the set of classes present (one to
four of the ten). Mosaics are built from the matching Fashion-MNIST split: each pass shuffles the split's items
with a generator seeded by (seed, split) and tiles them four at a time, so with the default single pass every item
appears in exactly one mosaic and a validation split carved from the training mosaics shares no item with them.
More passes give more mosaics, at the price of items repeating across mosaics (then also across train and val).
"""

from __future__ import annotations

import dataclasses

import torch

from visionbench.data import mnist
from visionbench.data.base import RawDataset, StaticInfo, TensorSplit, describes
from visionbench.errors import UserError
from visionbench.registry import DATASETS

GRID = 2


def tile(split: TensorSplit, passes: int, num_classes: int, generator: torch.Generator) -> TensorSplit:
    """Mosaics of `GRID`×`GRID` items of `split`; targets float (N, num_classes) multi-hot."""
    per = GRID * GRID
    n_items = len(split) - len(split) % per
    groups = torch.cat([torch.randperm(len(split), generator=generator)[:n_items] for _ in range(passes)])
    groups = groups.view(-1, GRID, GRID)  # (M, rows, cols) item indices
    M = len(groups)
    _, C, H, W = split.images.shape
    items = split.images[groups.reshape(-1)].view(M, GRID, GRID, C, H, W)
    images = items.permute(0, 3, 1, 4, 2, 5).reshape(M, C, GRID * H, GRID * W)  # (M, C, rows*H, cols*W)
    targets = torch.zeros(M, num_classes)
    targets.scatter_(1, split.targets[groups.view(M, -1)], 1.0)
    return TensorSplit(images.contiguous(), targets)


@DATASETS.register("fashion-mnist-mosaic")
def fashion_mnist_mosaic(root: str | None = None, download: bool = True, seed: int = 0, passes: int = 1) -> RawDataset:
    """2×2 mosaics of Fashion-MNIST items (15k train, 2.5k test with one pass); multi-label targets."""
    shape = _describe(passes)
    base = DATASETS.get("fashion-mnist")(root=root, download=download)
    k = base.info.num_outputs
    train = tile(base.train, passes, k, torch.Generator().manual_seed(seed * 2 + 0))
    test = tile(base.test, passes, k, torch.Generator().manual_seed(seed * 2 + 1))
    info = dataclasses.replace(
        base.info, name=shape.name, task=shape.task, input_size=shape.input_size, mean=(), std=()
    )
    return RawDataset(train=train, test=test, info=info)


@describes("fashion-mnist-mosaic")
def _describe(passes: int, **_) -> StaticInfo:
    if not isinstance(passes, int) or passes < 1:
        raise UserError(f"data.kwargs.passes: expected an integer >= 1, got {passes!r}")
    H, W = mnist.IMAGE_SIZE
    return StaticInfo("fashion-mnist-mosaic", "multilabel", mnist.NUM_CLASSES, (1, GRID * H, GRID * W))
