"""Tests for the generated `synthetic` dataset: determinism, shapes, class coverage and learnability."""

from __future__ import annotations

import pytest
import torch

from visionbench.data.synthetic import class_patterns, synthetic
from visionbench.errors import UserError
from visionbench.registry import DATASETS


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    torch.testing.assert_close(a.train.images, b.train.images, rtol=0, atol=0)
    torch.testing.assert_close(a.test.targets, b.test.targets, rtol=0, atol=0)
    assert not torch.equal(a.train.images, c.train.images), "a different seed must give different images"


@pytest.mark.parametrize(
    "kwargs", [{}, {"num_classes": 10, "channels": 3, "size": 32, "n_train": 100, "n_test": 30}, {"num_classes": 2}]
)
def test_shapes_dtypes_and_every_class_present(kwargs: dict[str, int]) -> None:
    raw = DATASETS.get("synthetic")(**kwargs)
    num_classes = kwargs.get("num_classes", 4)
    channels, size = kwargs.get("channels", 1), kwargs.get("size", 16)
    assert raw.train.images.shape == (kwargs.get("n_train", 512), channels, size, size)
    assert raw.test.images.shape == (kwargs.get("n_test", 128), channels, size, size)
    assert raw.train.images.dtype == torch.uint8 and raw.train.targets.dtype == torch.int64
    assert raw.train.targets.unique().tolist() == list(range(num_classes)), "train labels must span all classes"
    assert raw.test.targets.unique().tolist() == list(range(num_classes)), "test labels must span all classes"
    assert raw.info.name == "synthetic" and raw.info.task == "classification"
    assert raw.info.num_outputs == num_classes and len(raw.info.class_names) == num_classes
    assert raw.info.input_size == (channels, size, size)
    assert 5 < raw.train.images.float().std() < 100, "images should use the grey range, not saturate"


def test_patterns_are_distinct() -> None:
    patterns = class_patterns(10, 3, 16).flatten(1)
    distances = torch.cdist(patterns, patterns)
    off_diagonal = distances[~torch.eye(10, dtype=torch.bool)]
    assert off_diagonal.min() > 100, "every pair of class templates must differ clearly"


def test_is_learnable_by_nearest_class_mean() -> None:
    """A nearest-centroid classifier fit on train must be near perfect on test: the signal is there."""
    raw = synthetic()
    x_train, x_test = raw.train.images.flatten(1).float(), raw.test.images.flatten(1).float()
    centroids = torch.stack([x_train[raw.train.targets == k].mean(0) for k in range(raw.info.num_outputs)])
    preds = torch.cdist(x_test, centroids).argmin(1)
    accuracy = (preds == raw.test.targets).float().mean().item()
    assert accuracy > 0.9, f"nearest-centroid test accuracy {accuracy:.2f}"


def test_builder_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    synthetic(seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"n_train": 3}, "n_train"),
        ({"size": 2}, "size"),
        ({"channels": 0}, "channels"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(UserError, match=f"{key}="):
        synthetic(**kwargs)


def test_test_subset_keeps_the_first_test_images_and_leaves_train_and_val_alone() -> None:
    from visionbench.config import DataConfig
    from visionbench.data import build_datasets

    kwargs = {"num_classes": 3, "n_train": 90, "n_test": 40, "size": 8}
    full = build_datasets(DataConfig(name="synthetic", kwargs=kwargs))
    short = build_datasets(DataConfig(name="synthetic", kwargs=kwargs, test_subset=15))
    assert len(short.test) == 15 and len(full.test) == 40
    assert torch.equal(short.test.images, full.test.images[:15])
    assert torch.equal(short.train.images, full.train.images) and torch.equal(short.val.images, full.val.images)
