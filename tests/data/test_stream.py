"""The streaming loader: decoding in workers, the same batches whatever the worker count, exact mid-epoch
resume, one-line errors from inside a worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visionbench.config import AugmentConfig
from visionbench.data.base import DatasetInfo, FileSplit
from visionbench.data.stream import StreamLoader, decode_image
from visionbench.errors import UserError

INFO = DatasetInfo("t", "classification", 3, ("a", "b", "c"), (3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
AUG = AugmentConfig(flip=True, rot90=True, random_resized_crop=[0.5, 1.0], color_jitter=0.3, cutout_pixels=4)


def _files(folder, n=12) -> FileSplit:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 20 + 3 * (i % 4), 24 + 2 * (i % 3)  # sizes differ: the workers resize
        path = folder / f"{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return FileSplit(paths, torch.arange(n) % 3)


def _batches(split, workers, epoch=1, start=0, train=True, grayscale=False):
    loader = StreamLoader(
        split, INFO, 4, torch.device("cpu"), train, AUG, 7, image_size=16, grayscale=grayscale, num_workers=workers
    )
    return list(loader.epoch(epoch, start))


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    split = _files(tmp_path)
    single, multi = _batches(split, 0), _batches(split, 2)
    assert len(single) == 3 and single[0][0].shape == (4, 3, 16, 16)
    for (xa, ya), (xb, yb) in zip(single, multi, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = _batches(split, 0, epoch=2)
    assert not torch.equal(single[0][0], other_epoch[0][0])


def test_mid_epoch_start_equals_the_tail_of_the_epoch(tmp_path):
    split = _files(tmp_path)
    full, tail = _batches(split, 0), _batches(split, 0, start=1)
    assert len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[1:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_evaluation_keeps_order_resizes_and_does_not_augment(tmp_path):
    split = _files(tmp_path, n=6)
    batches = _batches(split, 0, train=False)
    assert [len(y) for _, y in batches] == [4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), split.targets)
    from torchvision.transforms import v2

    expected = v2.Resize((16, 16), antialias=True)(decode_image(split.paths[5])).float() / 255
    assert torch.allclose(batches[1][0][1], (expected - 0.5) / 0.25, atol=1e-5)
    grey = _batches(split, 0, train=False, grayscale=True)
    assert grey[0][0].shape == (4, 1, 16, 16)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_file_is_one_line_naming_it(tmp_path, workers):
    split = _files(tmp_path, n=4)
    (tmp_path / "2.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError) as e:
        _batches(split, workers, train=False)
    message = str(e.value)
    assert "2.jpg" in message and "cannot decode" in message and "\n" not in message


def test_npy_images_decode_as_float_without_pickle(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    x = decode_image(str(tmp_path / "a.npy"))
    assert x.shape == (1, 3, 4) and x.dtype == torch.float32 and x[0, 2, 3] == 11
    np.save(tmp_path / "b.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="b.npy: cannot read as a numpy array"):
        decode_image(str(tmp_path / "b.npy"))
