"""The streaming loader: decoding in workers, the same batches whatever the worker count, exact mid-epoch
resume, one-line errors from inside a worker."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionbench.config import AugmentConfig
from visionbench.data.base import DatasetInfo, FileSplit
from visionbench.data.loader import LoaderSpec
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
    spec = LoaderSpec(4, train=train, seed=7)
    loader = StreamLoader(split, INFO, torch.device("cpu"), spec, AUG, 16, grayscale, num_workers=workers)
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
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(3, 4) / 11)
    x = decode_image(str(tmp_path / "a.npy"))
    assert x.shape == (1, 3, 4) and x.dtype == torch.float32 and x[0, 2, 3] == 1
    np.save(tmp_path / "b.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="b.npy: an array of object"):
        decode_image(str(tmp_path / "b.npy"))


# ---------------------------------------------------------------------------------------------------------------
# Bit depths: one image, every way of storing it, one normalised tensor


def _grey_image() -> np.ndarray:
    """(H, W) uint8 with every grey level from 0 to 255 (a ramp), so that any scaling error shows."""
    return np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)


def _stored_as_every_depth(folder, image: np.ndarray) -> dict[str, str]:
    """The same grey levels as 8- and 16-bit PNG, 16-bit TIFF, 16-bit PGM, float TIFF, and uint8, uint16, uint32,
    float32 and float64 .npy (the wider integers at their full scale: v * 257 is v/255 of 65535)."""
    files = {
        "png8": ("png8.png", lambda p: Image.fromarray(image).save(p)),
        "png16": ("png16.png", lambda p: Image.fromarray(image.astype(np.uint16) * 257).save(p)),
        "tiff16": ("tiff16.tiff", lambda p: Image.fromarray(image.astype(np.uint16) * 257).save(p)),
        "tiff_float": ("float.tiff", lambda p: Image.fromarray((image / 255).astype(np.float32)).save(p)),
        "pgm16": (
            "pgm16.pgm",
            lambda p: open(p, "wb").write(b"P5\n16 16\n65535\n" + (image.astype(">u2") * 257).tobytes()),
        ),
        "u8": ("u8.npy", lambda p: np.save(p, image)),
        "u16": ("u16.npy", lambda p: np.save(p, image.astype(np.uint16) * 257)),
        "u32": ("u32.npy", lambda p: np.save(p, image.astype(np.uint32) * 16843009)),  # (2**32 - 1) / 255
        "f32": ("f32.npy", lambda p: np.save(p, (image / 255).astype(np.float32))),
        "f64": ("f64.npy", lambda p: np.save(p, image[None] / 255)),
    }
    paths = {}
    for kind, (name, write) in files.items():
        write(folder / name)
        paths[kind] = str(folder / name)
    return paths


@pytest.mark.parametrize("grayscale", [True, False])
def test_an_image_gives_the_same_values_at_every_bit_depth_and_format(tmp_path, grayscale):
    image = _grey_image()
    paths = _stored_as_every_depth(tmp_path, image)
    expected = torch.from_numpy(image / 255).float()
    for kind, path in paths.items():
        x = decode_image(path, grayscale)
        values = x.float() / 255 if x.dtype == torch.uint8 else x
        assert x.dtype in (torch.uint8, torch.float32), (kind, x.dtype)
        assert values.shape[1:] == (16, 16) and values.shape[0] in ((1,) if grayscale else (1, 3)), (kind, x.shape)
        for channel in values:
            torch.testing.assert_close(channel, expected, rtol=0, atol=1e-7, msg=kind)


def test_a_batch_mixing_8_bit_and_16_bit_files_is_normalised_like_each_alone(tmp_path):
    """The stream loader stacks uint8 and float images in one batch: each must be scaled as it would be alone."""
    paths = _stored_as_every_depth(tmp_path, _grey_image())
    split = FileSplit(list(paths.values()), torch.zeros(len(paths), dtype=torch.int64))
    info = DatasetInfo("t", "classification", 3, ("a", "b", "c"), (1, 16, 16), (0.5,), (0.25,))
    spec = LoaderSpec(64)
    loader = StreamLoader(split, info, torch.device("cpu"), spec, image_size=16, grayscale=True, num_workers=0)
    ((batch, _),) = list(loader.epoch(0))
    expected = (torch.from_numpy(_grey_image() / 255).float() - 0.5) / 0.25
    for kind, x in zip(paths, batch, strict=True):
        torch.testing.assert_close(x[0], expected, rtol=0, atol=1e-5, msg=kind)


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.arange(256, dtype=np.int64).reshape(16, 16), "signed integer pixels (int64) have no defined range"),
        (np.zeros((16, 16), dtype=np.int8), "signed integer pixels (int8)"),
        (
            np.arange(256, dtype=np.float32).reshape(16, 16),
            "float pixel values from 0 to 255; expected floats in [0, 1]",
        ),
        (np.full((16, 16), -0.5), "float pixel values from -0.5 to -0.5"),
        (np.full((3, 4, 4), np.nan, dtype=np.float16), "NaN or infinite"),
        (np.zeros((4, 16, 16), dtype=np.uint8), "with 1 or 3 channels"),
        (np.zeros((16, 16, 3), dtype=np.uint8), "with 1 or 3 channels"),  # channels last: not guessed
        (np.zeros((0, 16), dtype=np.uint8), "an empty array"),
        (np.ones((4, 4), dtype=np.complex64), "expected real numbers"),
    ],
)
def test_arrays_without_a_known_pixel_range_are_refused_naming_the_file(tmp_path, array, needle):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(UserError, match="x.npy: ") as e:
        decode_image(str(tmp_path / "x.npy"))
    assert needle in str(e.value), str(e.value)


def test_pillow_images_without_a_known_pixel_range_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.arange(16, dtype=np.int32).reshape(4, 4) - 3).save(tmp_path / "signed.tiff")
    Image.fromarray(np.full((4, 4), 2.0, dtype=np.float32)).save(tmp_path / "bright.tiff")
    with pytest.raises(UserError, match="signed.tiff: 32-bit integer pixels"):
        decode_image(str(tmp_path / "signed.tiff"))
    with pytest.raises(UserError, match=r"bright.tiff: float pixel values from 2 to 2; expected floats in \[0, 1\]"):
        decode_image(str(tmp_path / "bright.tiff"))


def test_pillow_modes_decode_to_8_bit_rgb_or_grey(tmp_path):
    """Palette with transparency, grey with alpha, RGBA, CMYK and 1-bit: all decode without a warning."""
    grey = _grey_image()
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png", transparency=b"\x00" * 16)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.gif", transparency=0)
    Image.fromarray(np.stack([grey, grey], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(np.stack([grey] * 4, -1), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([grey] * 4, -1), "CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(grey > 127).save(tmp_path / "bits.png")
    for name in ("p.png", "p.gif", "la.png", "rgba.png", "cmyk.jpg", "bits.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's palette-transparency warning among them
            rgb, grey_x = decode_image(str(tmp_path / name)), decode_image(str(tmp_path / name), grayscale=True)
        assert rgb.dtype == grey_x.dtype == torch.uint8, name
        assert rgb.shape == (3, 16, 16) and grey_x.shape == (1, 16, 16), name
    torch.testing.assert_close(decode_image(str(tmp_path / "la.png"), True)[0], torch.from_numpy(grey))
    assert set(decode_image(str(tmp_path / "bits.png"), True).unique().tolist()) == {0, 255}


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch):
    Image.new("L", (40, 30)).save(tmp_path / "big.png")  # over the limit below: Pillow would only warn
    Image.new("L", (100, 100)).save(tmp_path / "huge.png")  # over twice it: Pillow raises
    np.save(tmp_path / "big.npy", np.zeros((40, 30), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for name in ("big.png", "huge.png", "big.npy"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(UserError, match=f"{name}: .*decompression-bomb limit of 1000"):
                decode_image(str(tmp_path / name))


def test_other_pillow_warnings_are_logged_once_naming_the_file(tmp_path, monkeypatch, caplog):
    import visionbench.data.stream as stream

    path = str(tmp_path / "a.png")
    Image.fromarray(_grey_image()).save(path)
    original = stream._pil_pixels

    def warns(img, where, grayscale):
        warnings.warn("Possibly corrupt EXIF data", UserWarning, stacklevel=1)
        return original(img, where, grayscale)

    monkeypatch.setattr(stream, "_pil_pixels", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reaches the warnings machinery (printed raw, without the file)
        for _ in range(3):
            decode_image(path)
    assert [r.getMessage() for r in caplog.records] == [f"{path}: Possibly corrupt EXIF data"]


def test_an_npy_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1, 9000, 9000)})
    (tmp_path / "short.npy").write_bytes(header.getvalue() + b"\0" * 64)
    with pytest.raises(UserError, match=r"short.npy: truncated \(\d+ bytes; its header claims 324000128"):
        decode_image(str(tmp_path / "short.npy"))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1, 20000, 20000)})
    sparse = tmp_path / "sparse.npy"  # 1.6 GB as the file system counts it, a few KB on disk
    sparse.write_bytes(header.getvalue())
    os.truncate(sparse, len(header.getvalue()) + 4 * 20000 * 20000)
    with pytest.raises(UserError, match=r"sparse.npy: an array of shape \(1, 20000, 20000\), 400000000 pixels"):
        decode_image(str(sparse))


def test_only_regular_files_are_decoded(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.npy").mkdir()
    for path in (tmp_path / "fifo.png", tmp_path / "folder.npy", Path("/dev/zero")):
        with pytest.raises(UserError, match="not a regular file"):
            decode_image(str(path))
