"""The device-resident loader and batched augmentation."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench.config import AugmentConfig
from visionbench.data import transforms
from visionbench.data.base import DatasetInfo, TensorSplit
from visionbench.data.loader import DeviceLoader, LoaderSpec

INFO = DatasetInfo("t", "classification", 10, tuple("abcdefghij"), (1, 8, 8), mean=(0.5,), std=(0.25,))


def _split(n=50):
    images = torch.arange(n * 64, dtype=torch.int64).reshape(n, 1, 8, 8).remainder(251).to(torch.uint8)
    return TensorSplit(images, torch.arange(n) % 10)


def _loader(aug=None, batch=8, seed=0):
    return DeviceLoader(_split(), INFO, torch.device("cpu"), LoaderSpec(batch, train=True, seed=seed), aug)


def test_train_epoch_visits_each_image_at_most_once_and_is_seeded():
    loader = _loader()
    targets_seen = torch.cat([y for _, y in loader.epoch(0)])
    assert len(targets_seen) == len(loader) * 8 == 48  # drop_last
    first = [x for x, _ in loader.epoch(0)]
    again = [x for x, _ in _loader().epoch(0)]
    other = [x for x, _ in loader.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)), (
        "same (seed, epoch) must give the same batches"
    )
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True)), "epochs must differ"


@settings(max_examples=20, deadline=None)
@given(start=st.integers(0, 5), epoch=st.integers(0, 3))
def test_mid_epoch_start_equals_the_tail_of_the_full_epoch(start, epoch):
    aug = AugmentConfig(flip=True, translate_pixels=2, cutout_pixels=3)
    loader = _loader(aug)
    full = list(loader.epoch(epoch))
    tail = list(loader.epoch(epoch, start_batch=start))
    assert len(tail) == len(full) - start
    for (xa, ya), (xb, yb) in zip(full[start:], tail, strict=True):
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ya, yb)


def test_eval_loader_keeps_order_and_all_images():
    loader = DeviceLoader(_split(), INFO, torch.device("cpu"), LoaderSpec(16))
    ys = torch.cat([y for _, y in loader])
    assert torch.equal(ys, torch.arange(50) % 10)
    x, _ = next(iter(loader))
    torch.testing.assert_close(x, transforms.normalize(_split().images[:16], torch.tensor([0.5]), torch.tensor([0.25])))


@settings(max_examples=30, deadline=None)
@given(dx=st.integers(-2, 2), dy=st.integers(-2, 2))
def test_translate_shifts_content(dx, dy):
    images = torch.randint(0, 255, (3, 2, 8, 8), dtype=torch.uint8)
    out = transforms.translate(images, torch.full((3,), dx), torch.full((3,), dy), pad=2)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    # inside the valid region, out[y, x] == images[y + dy, x + dx]
    ys, xs = slice(max(0, -dy), 8 - max(0, dy)), slice(max(0, -dx), 8 - max(0, dx))
    src_y, src_x = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
    assert torch.equal(out[..., ys, xs], images[..., src_y, src_x])


def test_flip_and_cutout():
    images = torch.randint(1, 255, (4, 1, 6, 6), dtype=torch.uint8)
    mask = torch.tensor([True, False, True, False])
    out = transforms.flip(images, mask)
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    cut = transforms.cutout(images, torch.tensor([0, 3, 5, 2]), torch.tensor([0, 3, 5, 2]), size=2)
    assert (cut == 0).sum(dim=(1, 2, 3)).tolist() == [1, 4, 4, 4]  # clipped only at the top-left corner


def test_alternate_flip_flips_each_image_in_every_other_epoch():
    aug = AugmentConfig(flip=True, flip_mode="alternate")
    loader = DeviceLoader(_split(), INFO, torch.device("cpu"), LoaderSpec(50, train=True), aug)
    p0, p1 = loader._epoch_params(0, 50), loader._epoch_params(1, 50)
    by_image0 = torch.empty(50, dtype=torch.bool)
    by_image0[p0["order"]] = p0["flip"]
    by_image1 = torch.empty(50, dtype=torch.bool)
    by_image1[p1["order"]] = p1["flip"]
    assert torch.equal(by_image0, ~by_image1)


@settings(max_examples=20, deadline=None)
@given(k=st.lists(st.integers(0, 3), min_size=1, max_size=6))
def test_rot90_turns_each_image_by_its_own_multiple(k):
    images = torch.randint(0, 256, (len(k), 2, 5, 5), dtype=torch.uint8)
    turns = torch.tensor(k)
    out = transforms.rot90(images, turns)
    for i, t in enumerate(k):
        assert torch.equal(out[i], images[i].rot90(t, (-2, -1)))
    assert torch.equal(transforms.rot90(out, (4 - turns) % 4), images)


def test_vflip_and_rotate():
    images = torch.rand(3, 1, 6, 6)
    assert torch.equal(transforms.vflip(images, torch.tensor([True, False, True]))[0], images[0].flip(-2))
    assert torch.allclose(transforms.rotate(images, torch.zeros(3)), images, atol=1e-6)
    # a quarter turn lands pixel centres on pixel centres: the same as rot90, in either direction convention
    quarter = transforms.rotate(images, torch.full((3,), 90.0))
    assert any(torch.allclose(quarter, images.rot90(t, (-2, -1)), atol=1e-5) for t in (1, 3))
    as_uint8 = transforms.rotate((images * 255).to(torch.uint8), torch.full((3,), 30.0))
    assert as_uint8.dtype == torch.uint8


def test_new_augmentations_do_not_change_the_draws_of_the_old_ones():
    old = AugmentConfig(flip=True, translate_pixels=2)
    new = AugmentConfig(flip=True, translate_pixels=2, vflip=True, rot90=True, rotate_degrees=15)
    a, b = (_loader(aug) for aug in (old, new))
    pa, pb = a._epoch_params(3, 50), b._epoch_params(3, 50)
    for key in ("order", "flip", "dx", "dy"):
        assert torch.equal(pa[key], pb[key]), key
    assert set(pb) - set(pa) == {"vflip", "rot90", "angle"} and pb["angle"].abs().max() <= 15
