"""Tests for the idx reader and the MNIST / Fashion-MNIST builders: round trips, the real files, corrupt input,
lookup order and the missing-files message. No network: downloads are faked or forbidden."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visionbench.data import mnist as mnist_module
from visionbench.data import sources
from visionbench.data.mnist import FASHION_MNIST_CLASSES, fashion_mnist, mnist, read_idx, write_idx
from visionbench.errors import UserError
from visionbench.registry import DATASETS

REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def make_idx_dataset(
    folder: Path, n_train: int = 12, n_test: int = 7, gz: bool = True, label: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four idx files of a tiny MNIST-like dataset; `label` fixes every label (to tell folders apart)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8) if label is None else np.full(n, label, np.uint8)
        arrays[f"{split}-labels-idx1-ubyte"] = labels
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def idx_bytes(array: np.ndarray) -> bytes:
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return bytes([0, 0, 8, array.ndim]) + dims + array.tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Round trips and the real files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(5,), (3, 28, 28), (2, 3, 4, 5)])
def test_idx_round_trip(tmp_path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path / f"x-idx{suffix}", array)
    head = path.read_bytes()[:2]
    assert (head == b"\x1f\x8b") == (suffix == ".gz"), "write_idx must gzip exactly when the name ends in .gz"
    back = read_idx(path, ndim=len(shape))
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable, "the array must be writable so torch.from_numpy shares it without a warning"


def test_write_idx_is_the_documented_format(tmp_path: Path) -> None:
    array = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    raw = write_idx(tmp_path / "x", array).read_bytes()
    assert raw == bytes.fromhex("00000803000000010000000200000003") + bytes(range(6))


@pytest.mark.parametrize("gz", [True, False])
def test_builder_reads_written_files(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dataset(tmp_path / "d", gz=gz)
    raw = mnist(root=str(tmp_path / "d"), download=False)
    assert raw.train.images.dtype == torch.uint8 and raw.train.images.shape == (12, 1, 28, 28)
    assert raw.test.images.shape == (7, 1, 28, 28)
    assert raw.train.targets.dtype == torch.int64
    np.testing.assert_array_equal(raw.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.test.targets.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert raw.info.name == "mnist" and raw.info.task == "classification" and raw.info.num_outputs == 10
    assert raw.info.class_names == tuple("0123456789") and raw.info.input_size == (1, 28, 28)


def test_fashion_mnist_info_and_registry(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    raw = DATASETS.get("fashion-mnist")(root=str(tmp_path), download=False)
    assert raw.info.class_names == FASHION_MNIST_CLASSES and len(FASHION_MNIST_CLASSES) == 10
    assert raw.info.class_names[0] == "T-shirt/top" and raw.info.class_names[9] == "Ankle boot"
    assert "mnist" in DATASETS


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason=f"{REAL_FASHION_MNIST} is not installed")
def test_real_fashion_mnist_files() -> None:
    raw = fashion_mnist(download=False)  # found in the system folder: root, $VISIONBENCH_DATA and cache are empty
    assert raw.train.images.shape == (60000, 1, 28, 28) and raw.train.images.dtype == torch.uint8
    assert raw.test.images.shape == (10000, 1, 28, 28)
    assert raw.train.targets.bincount().tolist() == [6000] * 10, "Fashion-MNIST train has 6000 images per class"
    assert raw.test.targets.bincount().tolist() == [1000] * 10
    assert 60 < raw.train.images.float().mean() < 80, "mean grey level of Fashion-MNIST is about 72.9"


# ---------------------------------------------------------------------------------------------------------------
# Corrupt files: always a UserError naming the file


def write_split(folder: Path, images: bytes, labels: bytes) -> None:
    """Write raw bytes as the train files and a valid test split, so the train files are what fails."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(images)
    (folder / "train-labels-idx1-ubyte").write_bytes(labels)
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))


GOOD_IMAGES = idx_bytes(np.zeros((3, 28, 28), np.uint8))
GOOD_LABELS = idx_bytes(np.array([0, 1, 2], np.uint8))


@pytest.mark.parametrize(
    ("images", "labels", "bad_file", "expected"),
    [
        (GOOD_IMAGES[:1000], GOOD_LABELS, "train-images-idx3-ubyte", "truncated: header says 3x28x28 (2352 bytes)"),
        (GOOD_IMAGES + b"\0", GOOD_LABELS, "train-images-idx3-ubyte", "oversized"),
        (b"\x12\x34" + GOOD_IMAGES[2:], GOOD_LABELS, "train-images-idx3-ubyte", "not an idx file"),
        (GOOD_IMAGES[:2] + b"\x0d" + GOOD_IMAGES[3:], GOOD_LABELS, "train-images-idx3-ubyte", "dtype code 0x0d"),
        (GOOD_LABELS, GOOD_LABELS, "train-images-idx3-ubyte", "expected 0x00000803"),
        (GOOD_IMAGES, GOOD_IMAGES, "train-labels-idx1-ubyte", "expected 0x00000801"),
        (GOOD_IMAGES[:10], GOOD_LABELS, "train-images-idx3-ubyte", "truncated"),
        (b"", GOOD_LABELS, "train-images-idx3-ubyte", "truncated"),
        (GOOD_IMAGES, idx_bytes(np.array([0, 1], np.uint8)), "train-labels-idx1-ubyte", "3 images but"),
        (GOOD_IMAGES, idx_bytes(np.array([0, 12, 2], np.uint8)), "train-labels-idx1-ubyte", "label 12 at index 1"),
        (idx_bytes(np.zeros((3, 27, 28), np.uint8)), GOOD_LABELS, "train-images-idx3-ubyte", "expected 28x28"),
    ],
    ids=["truncated", "oversized", "bad-magic", "dtype", "rank-images", "rank-labels", "short-header", "empty",
         "count-mismatch", "label-range", "image-size"],
)  # fmt: skip
def test_corrupt_files_raise_user_error_naming_file(
    tmp_path: Path, images: bytes, labels: bytes, bad_file: str, expected: str
) -> None:
    write_split(tmp_path, images, labels)
    with pytest.raises(UserError) as info:
        mnist(root=str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path / bad_file) in message, f"the message must name the file: {message}"
    assert expected in message, message
    assert "\n" not in message, "the CLI prints UserError as one line"


def test_corrupt_gzip_raises_user_error(tmp_path: Path) -> None:
    good = gzip.compress(GOOD_IMAGES)
    for name, data in {
        "cut": good[: len(good) // 2],
        "garbage": b"\x1f\x8b" + b"\xff" * 50,
        "not-gzip": b"hello",
    }.items():
        path = tmp_path / f"{name}-idx3-ubyte.gz"
        path.write_bytes(data)
        with pytest.raises(UserError, match="corrupt gzip") as info:
            read_idx(path, ndim=3)
        assert str(path) in str(info.value)


def test_truncation_message_matches_the_documented_example(tmp_path: Path) -> None:
    header = bytes.fromhex("00000803") + np.asarray([60000, 28, 28], ">u4").tobytes()
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(header + bytes(1234))
    with pytest.raises(UserError) as info:
        read_idx(path, ndim=3)
    assert str(info.value) == f"{path}: truncated: header says 60000x28x28 (47040000 bytes) but 1234 bytes follow"


_VALID_RAW = idx_bytes(np.random.default_rng(2).integers(0, 256, (4, 28, 28), dtype=np.uint8))
_VALID_GZ = gzip.compress(_VALID_RAW, mtime=0)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), gz=st.booleans())
def test_any_truncation_is_a_user_error(tmp_path: Path, data: st.DataObject, gz: bool) -> None:
    valid = _VALID_GZ if gz else _VALID_RAW
    cut = data.draw(st.integers(0, len(valid) - 1), label="cut")
    path = tmp_path / ("t-idx3-ubyte.gz" if gz else "t-idx3-ubyte")
    path.write_bytes(valid[:cut])
    with pytest.raises(UserError) as info:
        read_idx(path, ndim=3)
    assert str(path) in str(info.value)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from([b"", b"\0\0\x08\x01", b"\0\0\x08\x03", b"\0\0\x08\x03\0\0\0\x01"]),
    body=st.binary(max_size=80),
    ndim=st.sampled_from([1, 3]),
)
def test_arbitrary_bytes_give_an_array_or_a_user_error(tmp_path: Path, prefix: bytes, body: bytes, ndim: int) -> None:
    path = tmp_path / "fuzz-idx"
    path.write_bytes(prefix + body)
    try:
        array = read_idx(path, ndim=ndim)
    except UserError as exc:
        assert str(path) in str(exc)
    else:
        assert array.dtype == np.uint8 and array.ndim == ndim


# ---------------------------------------------------------------------------------------------------------------
# Lookup order, missing files, download


def test_root_beats_env_beats_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dataset(tmp_path / "root", label=1)
    make_idx_dataset(tmp_path / "env" / "mnist", label=2)  # $VISIONBENCH_DATA/<name> is searched too
    make_idx_dataset(tmp_path / "xdg-cache" / "visionbench" / "mnist", label=3)
    monkeypatch.setenv("VISIONBENCH_DATA", str(tmp_path / "env"))
    assert mnist(root=str(tmp_path / "root"), download=False).train.targets.unique().tolist() == [1]
    assert mnist(root=None, download=False).train.targets.unique().tolist() == [2]
    monkeypatch.delenv("VISIONBENCH_DATA")
    assert mnist(root=None, download=False).train.targets.unique().tolist() == [3]


def test_incomplete_folder_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dataset(tmp_path / "root", label=1)
    (tmp_path / "root" / "t10k-labels-idx1-ubyte.gz").unlink()
    make_idx_dataset(tmp_path / "env", label=2, gz=False)
    monkeypatch.setenv("VISIONBENCH_DATA", str(tmp_path / "env"))
    assert mnist(root=str(tmp_path / "root"), download=False).train.targets.unique().tolist() == [2]


def test_mixed_gz_and_raw_files_count_as_complete(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, gz=True)
    raw_labels = tmp_path / "train-labels-idx1-ubyte"
    raw_labels.write_bytes(gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes()))
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    assert len(mnist(root=str(tmp_path), download=False).train) == 12


def test_missing_files_without_download_list_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        mnist(root=str(tmp_path / "nowhere"), download=False)
    message = str(info.value)
    for expected in [str(tmp_path / "nowhere"), str(tmp_path / "xdg-cache" / "visionbench" / "mnist"), *FILES]:
        assert expected in message, f"{expected!r} missing from: {message}"
    assert "download=False" in message and "\n" not in message


def test_failed_download_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
        calls.append((url, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "download", offline)
    with pytest.raises(UserError, match="network is unreachable") as info:
        mnist(root=str(tmp_path / "nowhere"), download=True)
    assert str(tmp_path / "nowhere") in str(info.value)
    assert len(calls) == 1, "the first failure must stop the download, not retry each file"
    assert calls[0][1] <= 15, "the timeout must be short so an offline machine fails fast"


def test_download_fetches_official_files_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "server"
    arrays = make_idx_dataset(source)
    fetched = []

    def fake_download(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
        fetched.append((url, md5))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((source / url.rsplit("/", 1)[1]).read_bytes())
        return dest

    monkeypatch.setattr(sources, "download", fake_download)
    raw = mnist(root=None, download=True)
    cache = tmp_path / "xdg-cache" / "visionbench" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{f}.gz" for f in FILES)
    base_url, md5s = mnist_module.SOURCES["mnist"]
    assert fetched == [(base_url + name, md5) for name, md5 in md5s.items()], "official URLs with their md5s"
    np.testing.assert_array_equal(raw.train.targets.numpy(), arrays["train-labels-idx1-ubyte"])
