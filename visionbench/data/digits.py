"""scikit-learn's handwritten digits (the test part of UCI's optdigits): 1,797 8x8 images with 17 grey levels.

Ships inside scikit-learn, so it is real data that needs no download: the transfer source of the Fashion-MNIST
image-mining table (a different dataset, no shared images). There is no official split; the last
`DIGITS_TEST` images are the test split, the same on every machine.
"""

from __future__ import annotations

import functools

import torch

from visionbench.data.base import DatasetInfo, RawDataset, TensorSplit, describes, select_classes, subset_info
from visionbench.registry import DATASETS

DIGITS_TEST = 297  # 1,500 train / 297 test
DIGIT_NAMES = tuple(str(d) for d in range(10))
IMAGE_SIZE = (1, 8, 8)


@DATASETS.register("digits")
def digits(classes: list | None = None) -> RawDataset:
    """sklearn.datasets.load_digits as uint8 (values 0..16 scaled to 0..255), (N, 1, 8, 8); `classes` keeps a
    subset. Use `data.image_size` to upsample for models that need larger input."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().clamp(0, 255).to(torch.uint8)[:, None]
    targets = torch.from_numpy(bunch.target).long()
    n_train = len(images) - DIGITS_TEST
    info = DatasetInfo(
        name="digits", task="classification", num_outputs=10, class_names=DIGIT_NAMES, input_size=IMAGE_SIZE
    )
    raw = RawDataset(
        train=TensorSplit(images[:n_train], targets[:n_train]),
        test=TensorSplit(images[n_train:], targets[n_train:]),
        info=info,
    )
    return select_classes(raw, classes)


describes("digits")(functools.partial(subset_info, "digits", DIGIT_NAMES, IMAGE_SIZE))
