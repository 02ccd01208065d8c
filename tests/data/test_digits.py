"""scikit-learn's digits as a dataset, and `data.image_size` for datasets held in memory (shrunk once at load,
enlarged batch by batch)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench.config import DataConfig
from visionbench.data import LoaderSpec, build_datasets, build_loader
from visionbench.data.base import TensorSplit, resize_split
from visionbench.registry import DATASETS


def test_digits_is_sklearns_data_with_a_fixed_split() -> None:
    from sklearn.datasets import load_digits

    raw = DATASETS.get("digits")()
    bunch = load_digits()
    assert raw.train.images.shape == (1500, 1, 8, 8) and raw.test.images.shape == (297, 1, 8, 8)
    assert raw.train.images.dtype == torch.uint8 and int(raw.train.images.max()) == 255
    ink = (torch.from_numpy(bunch.images[:1500]) > 0)[:, None]
    assert torch.equal(raw.train.images > 0, ink), "the same pixels carry ink"
    assert raw.test.targets.tolist() == bunch.target[1500:].tolist()
    assert raw.info.num_outputs == 10 and raw.info.class_names[3] == "3"
    subset = DATASETS.get("digits")(classes=[7, 1])
    assert set(subset.train.targets.tolist()) == {0, 1} and subset.info.class_names == ("7", "1")


def test_image_size_above_the_stored_size_keeps_the_stored_images_and_sizes_the_batches() -> None:
    cfg = DataConfig(name="digits", image_size=32, val_fraction=0.1)
    data = build_datasets(cfg)
    assert data.info.input_size == (1, 32, 32)
    assert data.train.images.shape[1:] == (1, 8, 8) and data.test.images.shape[1:] == (1, 8, 8), "held as stored"
    assert data.val.images.shape[1:] == (1, 8, 8) and data.train.images.dtype == torch.uint8
    x, _ = next(iter(build_loader(data, "test", cfg, torch.device("cpu"), LoaderSpec(64))))
    assert x.shape == (64, 1, 32, 32), "batches come out at data.image_size"
    expected = resize_split(data.test.take(slice(0, 64)), 32).images.float() / 255
    torch.testing.assert_close(
        x, (expected - data.info.mean[0]) / data.info.std[0], msg="as a resize at load would give"
    )


def test_image_size_below_the_stored_size_shrinks_the_split_once_at_load() -> None:
    data = build_datasets(DataConfig(name="synthetic", image_size=8, val_fraction=0.1))
    assert data.info.input_size == (1, 8, 8)
    assert data.train.images.shape[1:] == (1, 8, 8) and data.test.images.shape[1:] == (1, 8, 8)
    assert data.val.images.shape[1:] == (1, 8, 8)


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(8, 40),
    side=st.integers(8, 40),
    value=st.integers(0, 255),
    channels=st.integers(1, 3),
    floats=st.booleans(),
)
def test_resize_keeps_dtype_targets_and_flat_images_flat(size, side, value, channels, floats) -> None:
    images = torch.full((3, channels, side, side), value, dtype=torch.uint8)
    if floats:
        images = images.float() / 255
    split = TensorSplit(images, torch.arange(3))
    out = resize_split(split, size, chunk=2)
    assert out.images.shape == (3, channels, size, size) and out.images.dtype == images.dtype
    assert torch.equal(out.targets, split.targets)
    assert torch.allclose(out.images.float(), images.float().flatten()[0].expand_as(out.images.float()), atol=1e-5)
    if size == side:
        assert out is split
