"""A tiny generated classification dataset for tests, smoke configs and golden runs.

Class `k` is a smooth sinusoidal grating whose orientation is `k * 180 / num_classes` degrees (the phase also
shifts with the channel), drawn at a random contrast and brightness and covered in Gaussian pixel noise. The
gratings differ in every pixel pattern, so a small CNN or even a linear model learns them in an epoch or two, yet
the noise keeps single pixels uninformative. Everything is drawn from one `torch.Generator` seeded by `seed`:
the same arguments give the same bytes on every machine.
"""

from __future__ import annotations

import math

import torch

from visionbench.data.base import DatasetInfo, RawDataset, StaticInfo, TensorSplit, describes
from visionbench.errors import UserError
from visionbench.registry import DATASETS

CYCLES_PER_IMAGE = 2.0  # grating frequency: low enough to survive 16x16 and random crops
AMPLITUDE = 70.0  # grey levels, before the per-image contrast factor
NOISE_STD = 30.0  # grey levels


def class_patterns(num_classes: int, channels: int, size: int) -> torch.Tensor:
    """The noiseless template of each class, centred on zero, in grey levels.

    Returns:
        Float tensor (num_classes, channels, size, size) with values in [-AMPLITUDE, AMPLITUDE].
    """
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # pixel centres in [0, 1]
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (H, W)
    angles = torch.arange(num_classes, dtype=torch.float64) * math.pi / num_classes  # (K,)
    # Phase shifts between channels make colour (when channels > 1) carry information too.
    phases = torch.arange(channels, dtype=torch.float64) * 2 * math.pi / (channels + 1)  # (C,)
    along = x * angles.cos().view(-1, 1, 1) + y * angles.sin().view(-1, 1, 1)  # (K, H, W)
    waves = torch.cos(2 * math.pi * CYCLES_PER_IMAGE * along[:, None] + phases.view(1, -1, 1, 1))  # (K, C, H, W)
    return (AMPLITUDE * waves).float()


def _draw(n: int, patterns: torch.Tensor, generator: torch.Generator) -> TensorSplit:
    num_classes = len(patterns)
    # Balanced labels, then shuffled: every class is present whenever n >= num_classes.
    targets = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=generator)
    brightness = torch.empty(n, 1, 1, 1).uniform_(-20.0, 20.0, generator=generator)
    noise = torch.randn((n, *patterns.shape[1:]), generator=generator) * NOISE_STD
    images = 128.0 + brightness + contrast * patterns[targets] + noise  # (N, C, H, W), grey levels
    return TensorSplit(images=images.round().clamp(0, 255).to(torch.uint8), targets=targets.long())


@DATASETS.register("synthetic")
def synthetic(
    root: str | None = None,
    download: bool = True,
    num_classes: int = 4,
    n_train: int = 512,
    n_test: int = 128,
    channels: int = 1,
    size: int = 16,
    seed: int = 0,
) -> RawDataset:
    """Seeded oriented-grating classification; `root` and `download` are accepted, like every builder, and unused."""
    shape = _describe(num_classes, n_train, n_test, channels, size, seed)
    generator = torch.Generator().manual_seed(seed)
    patterns = class_patterns(num_classes, channels, size)
    train = _draw(n_train, patterns, generator)
    test = _draw(n_test, patterns, generator)
    class_names = tuple(f"class_{k}" for k in range(num_classes))
    info = DatasetInfo(shape.name, shape.task, shape.num_outputs, class_names, shape.input_size)
    return RawDataset(train=train, test=test, info=info)


@describes("synthetic")
def _describe(num_classes: int, n_train: int, n_test: int, channels: int, size: int, seed: int, **_) -> StaticInfo:
    """The sizes and classes the arguments ask for, checked."""
    checks = {
        "num_classes": (num_classes, 2),
        "n_train": (n_train, num_classes),
        "n_test": (n_test, 1),
        "channels": (channels, 1),
        "size": (size, 4),
    }
    for key, (value, minimum) in checks.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"synthetic dataset: {key}={value!r}, expected an integer >= {minimum}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**64:  # torch's seed range
        raise UserError(f"synthetic dataset: seed={seed!r}, expected an integer in [-2**63, 2**64)")
    return StaticInfo("synthetic", "classification", num_classes, (channels, size, size))
