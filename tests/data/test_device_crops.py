"""Crops of in-memory datasets on the device: zero-padded translation (`augment.pad_mode`) and the batched random
resized crop (`augment.random_resized_crop`), checked against torchvision's per-image transforms. CPU, tiny data."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from visionbench.config import AugmentConfig, DataConfig
from visionbench.data import augment_placement, build_datasets, transforms
from visionbench.data.base import DatasetInfo, TensorSplit
from visionbench.data.loader import CROP_RATIO, DeviceLoader, LoaderSpec, crop_boxes
from visionbench.data.stream import worker_transform
from visionbench.errors import UserError

INFO = DatasetInfo("t", "classification", 4, tuple("abcd"), (3, 12, 12), mean=(0.0,) * 3, std=(1.0,) * 3)
MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _split(n: int = 40, side: int = 12) -> TensorSplit:
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return TensorSplit(images, torch.arange(n) % 4)


def _loader(aug: AugmentConfig, info: DatasetInfo = INFO, side: int = 12, seed: int = 0, **sizing) -> DeviceLoader:
    return DeviceLoader(
        _split(side=side), info, torch.device("cpu"), LoaderSpec(8, train=True, seed=seed), aug, **sizing
    )


# ---------------------------------------------------------------------------------------------------------------
# pad_mode


@settings(max_examples=25, deadline=None)
@given(dx=st.integers(-3, 3), dy=st.integers(-3, 3))
def test_zero_padding_puts_zeros_exactly_where_the_shift_uncovers_the_border(dx, dy):
    images = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    out = transforms.translate(images, torch.full((2,), dx), torch.full((2,), dy), pad=3, pad_mode="zeros")
    # out[y, x] = images[y + dy, x + dx]: rows (columns) whose source lies outside the image are zero
    rows, cols = torch.arange(8) + dy, torch.arange(8) + dx
    outside = ((rows < 0) | (rows >= 8))[:, None] | ((cols < 0) | (cols >= 8))[None, :]
    assert torch.equal(out == 0, outside.expand_as(out)), "zeros exactly on the uncovered border"
    reflected = transforms.translate(images, torch.full((2,), dx), torch.full((2,), dy), pad=3)
    assert bool((reflected == 200).all()), "reflect padding of a flat image stays flat"


def test_pad_mode_zeros_reaches_the_loaders_translation():
    split = TensorSplit(torch.full((16, 3, 12, 12), 255, dtype=torch.uint8), torch.arange(16) % 4)
    aug = AugmentConfig(translate_pixels=3, pad_mode="zeros")
    loader = DeviceLoader(split, INFO, torch.device("cpu"), LoaderSpec(16, train=True), aug)
    ((x, _),) = list(loader.epoch(0))
    plan = loader._epoch_params(0, 16)
    assert bool(((plan["dx"] != 0) | (plan["dy"] != 0)).any()), "some image is shifted"
    for image, dx, dy in zip(x, plan["dx"].tolist(), plan["dy"].tolist(), strict=True):
        zero_rows = abs(dy) * 12 if dy else 0
        zero_cols = abs(dx) * (12 - abs(dy))
        assert int((image[0] == 0).sum()) == zero_rows + zero_cols, (dx, dy)
    assert augment_placement(aug, streamed=False)["device"] == ["translate_pixels"], "pad_mode is a setting"


# ---------------------------------------------------------------------------------------------------------------
# random resized crop, batched


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(8, 8), (20, 20), (12, 15)])  # shrinking, enlarging, mixed
def test_batched_resized_crop_equals_torchvisions_resized_crop_per_image(interpolation, size):
    x = torch.rand(5, 3, 12, 14, generator=torch.Generator().manual_seed(0))
    boxes = {
        "top": torch.tensor([0, 2, 5, 0, 3]),
        "left": torch.tensor([0, 1, 4, 9, 2]),
        "height": torch.tensor([12, 6, 7, 3, 9]),
        "width": torch.tensor([14, 10, 5, 5, 11]),
    }
    out = transforms.resized_crop(x, boxes, size, interpolation)
    for i in range(5):
        box = [int(boxes[k][i]) for k in ("top", "left", "height", "width")]
        expected = TF.resized_crop(x[i], *box, list(size), interpolation=MODES[interpolation], antialias=True)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-5, msg=f"image {i}")
    as_uint8 = transforms.resized_crop((x * 255).to(torch.uint8), boxes, size, interpolation)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (5, 3, *size)


def test_crop_boxes_are_torchvisions_distribution_and_fit_the_image():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(4000, (32, 24), [0.25, 0.8], g)
    top, left, h, w = (boxes[f"crop_{k}"] for k in ("top", "left", "height", "width"))
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 24).all())
    area = (h * w).float() / (32 * 24)
    aspect = w.float() / h.float()
    # rounding to whole pixels widens the ranges slightly
    assert 0.2 < float(area.min()) and float(area.max()) < 0.87, (float(area.min()), float(area.max()))
    assert CROP_RATIO[0] * 0.85 < float(aspect.min()) and float(aspect.max()) < CROP_RATIO[1] * 1.15
    assert abs(float(area.mean()) - 0.525) < 0.03, "uniform area fraction"
    assert abs(float(((top.float() + h / 2) / 32).mean()) - 0.5) < 0.02, "placed uniformly: centred on average"
    whole = crop_boxes(50, (8, 8), [1.0, 1.0], g)
    assert whole["crop_height"].tolist() == [8] * 50 and whole["crop_width"].tolist() == [8] * 50
    assert whole["crop_top"].tolist() == [0] * 50 and whole["crop_left"].tolist() == [0] * 50
    tall = crop_boxes(10, (40, 10), [1.0, 1.0], g)  # no box of the whole area fits: torchvision's central fallback
    assert tall["crop_height"].tolist() == [round(10 / CROP_RATIO[0])] * 10 and tall["crop_width"].tolist() == [10] * 10
    assert tall["crop_top"].tolist() == [(40 - 13) // 2] * 10


def test_in_memory_random_resized_crop_is_one_batched_call_per_batch_with_the_planned_boxes(monkeypatch):
    calls = []
    real = transforms.resized_crop
    monkeypatch.setattr(transforms, "resized_crop", lambda x, *a, **k: calls.append(len(x)) or real(x, *a, **k))
    aug = AugmentConfig(random_resized_crop=[0.3, 1.0])
    info = DatasetInfo("t", "classification", 4, tuple("abcd"), (3, 20, 20), mean=(0.0,) * 3, std=(1.0,) * 3)
    loader = _loader(aug, info, interpolation="bicubic")
    batches = list(loader.epoch(2))
    assert calls == [8] * len(batches) == [8] * 5, "one batched call per batch, no per-image loop"
    plan = loader._epoch_params(2, 40)
    x0 = batches[0][0]
    assert x0.shape == (8, 3, 20, 20)
    for j in range(8):
        index = int(plan["order"][j])
        box = [int(plan[f"crop_{k}"][j]) for k in ("top", "left", "height", "width")]
        image = loader.images[index].float()
        expected = TF.resized_crop(image, *box, [20, 20], interpolation=InterpolationMode.BICUBIC, antialias=True)
        expected = expected.round().clamp(0, 255) / 255
        torch.testing.assert_close(x0[j], expected, rtol=0, atol=1 / 255 + 1e-6, msg=f"image {j}")


@settings(max_examples=15, deadline=None)
@given(start=st.integers(0, 4), epoch=st.integers(0, 3))
def test_random_resized_crop_is_seeded_and_a_resumed_epoch_repeats_it(start, epoch):
    aug = AugmentConfig(random_resized_crop=[0.2, 1.0], flip=True, translate_pixels=1, pad_mode="zeros")
    loader = _loader(aug)
    full = list(loader.epoch(epoch))
    tail = list(loader.epoch(epoch, start_batch=start))
    for (xa, ya), (xb, yb) in zip(full[start:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    again = list(_loader(aug).epoch(epoch))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(full, again, strict=True)), "same seed, same crops"
    other = list(_loader(aug, seed=1).epoch(epoch))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(full, other, strict=True)), "another seed differs"


def test_random_resized_crop_of_an_in_memory_dataset_is_accepted_and_placed_on_the_device():
    aug = AugmentConfig(random_resized_crop=[0.35, 1.0], flip=True)
    data = build_datasets(DataConfig(name="synthetic", augment=aug, kwargs={"n_train": 16, "n_test": 8}))
    assert data.train.images.shape[-1] == 16
    assert augment_placement(aug, streamed=False) == {"device": ["flip", "random_resized_crop"], "workers": []}
    assert augment_placement(aug, streamed=True)["workers"] == ["random_resized_crop"]
    with pytest.raises(UserError, match="color_jitter"):
        build_datasets(DataConfig(name="synthetic", augment=AugmentConfig(color_jitter=0.2)))


def test_random_resized_crop_with_timms_per_image_augmentation_crops_in_the_workers():
    aug = AugmentConfig(random_resized_crop=[0.35, 1.0], auto_augment="rand-m9-mstd0.5-inc1")
    crop = worker_transform(aug, 3, (24, 24), (0.5,) * 3, (0.25,) * 3, "bicubic", crop=True).transforms[0]
    assert tuple(crop.scale) == (0.35, 1.0) and tuple(crop.ratio) == CROP_RATIO and crop.size == (24, 24)
    streamed = worker_transform(aug, 3, (24, 24), (0.5,) * 3, (0.25,) * 3, "bicubic", crop=False).transforms[0]
    assert tuple(streamed.scale) == (1.0, 1.0), "a streamed image was cropped before (v2 RandomResizedCrop)"
    assert augment_placement(aug, streamed=False)["workers"] == ["auto_augment", "random_resized_crop"]


def test_random_resized_crop_area_fractions_must_be_ordered_fractions():
    from visionbench.config import load_config

    for value, needle in (("[0.9,0.5]", "smallest, largest"), ("[0,1]", "greater than 0"), ("[0.5,1.5]", "1")):
        with pytest.raises(UserError, match=re.escape(needle)):
            load_config(None, [f"data.augment.random_resized_crop={value}"])
