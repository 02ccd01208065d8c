"""MNIST and Fashion-MNIST from their idx files (LeCun's format, also used by Zalando's Fashion-MNIST).

Format: http://yann.lecun.com/exdb/mnist/ (section "FILE FORMATS"). A file is a 4-byte magic number, big-endian:
two zero bytes, a dtype code (0x08 = uint8, the only one these datasets use) and the number of dimensions; then
one big-endian uint32 per dimension; then the payload in C order. Images are 0x00000803 (N, 28, 28), labels
0x00000801 (N,).

The reader is one `numpy.frombuffer` per file, no per-image Python, and checks the header against the payload so
that a truncated download or a wrong file is reported as a `UserError` naming the file, never as a reshape error.
Files are found with `search_dirs`, `.gz` or uncompressed, and downloaded into the cache when missing. Download
URLs and md5s are the ones torchvision publishes (`torchvision/datasets/mnist.py`, BSD-3-Clause).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch

from visionbench.data import sources
from visionbench.data.base import DatasetInfo, RawDataset, TensorSplit, describes, select_classes, subset_info
from visionbench.errors import UserError
from visionbench.registry import DATASETS
from visionbench.utils.bounded import ARRAY_FILE_BYTES, open_regular, size_text
from visionbench.utils.io import write_bytes

log = logging.getLogger(__name__)

# Split -> (images file, labels file), without the optional ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))

# (base URL, {file.gz: md5}); the md5s are of the compressed files as served.
SOURCES = {
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}

_IDX_UINT8 = 0x08
# The largest idx payload read: EMNIST ByClass, the largest MNIST-like set, is 814k x 28 x 28 = 638 MB.
IDX_BYTES = 1 << 30


def read_idx(path: str | os.PathLike, ndim: int, item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a uint8 idx file (gzip-compressed when the name ends in `.gz`).

    The header is checked before the payload is read, and the payload is read only up to what the header claims
    (at most IDX_BYTES): a gzip bomb or a header claiming terabytes costs nothing.

    Args:
        path: the file.
        ndim: the number of dimensions the caller expects (3 for images, 1 for labels).
        item_shape: the dimensions after the first the caller expects ((28, 28) for images), checked in the header.

    Returns:
        A writable uint8 array of the shape the header gives.

    Raises:
        UserError: not a regular file, unreadable or corrupt gzip, wrong magic, dtype, rank or item shape, a claim
            beyond IDX_BYTES, or a payload whose size does not match the header.
    """
    path = Path(path)
    expected_magic = (_IDX_UINT8 << 8) | ndim
    header_bytes = 4 + 4 * ndim
    with _open_idx(path) as f:
        data = _read_upto(f, path, header_bytes)
        if len(data) < 4:
            raise UserError(f"{path}: truncated: {len(data)} bytes, expected an idx header of {header_bytes} bytes")
        magic = int.from_bytes(data[:4], "big")
        if data[0] != 0 or data[1] != 0:
            raise UserError(f"{path}: not an idx file: magic 0x{magic:08x}, expected 0x{expected_magic:08x}")
        if data[2] != _IDX_UINT8:
            raise UserError(f"{path}: idx dtype code 0x{data[2]:02x}, expected 0x{_IDX_UINT8:02x} (uint8)")
        if data[3] != ndim:
            raise UserError(f"{path}: idx magic 0x{magic:08x} has {data[3]} dims, expected 0x{expected_magic:08x}")
        if len(data) < header_bytes:
            raise UserError(f"{path}: truncated: {len(data)} bytes, expected an idx header of {header_bytes} bytes")
        dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
        if item_shape is not None and dims[1:] != tuple(item_shape):
            got, want = "x".join(map(str, dims[1:])), "x".join(map(str, item_shape))
            raise UserError(f"{path}: images are {got}, expected {want}")
        payload_bytes = math.prod(dims)  # Python ints: several uint32 dims can overflow int64
        shape = "x".join(map(str, dims))
        if payload_bytes > IDX_BYTES:
            raise UserError(
                f"{path}: header says {shape} ({payload_bytes} bytes), more than the {size_text(IDX_BYTES)} "
                "an idx file may hold"
            )
        payload = _read_upto(f, path, payload_bytes + 1)  # one byte more tells an oversized file
    follow = len(payload)
    if follow != payload_bytes:
        what = "truncated" if follow < payload_bytes else "oversized"
        shown = follow if follow <= payload_bytes else "more"
        raise UserError(f"{path}: {what}: header says {shape} ({payload_bytes} bytes) but {shown} bytes follow")
    # `payload` is a bytearray, so the array is writable and torch.from_numpy shares it without a copy or a warning.
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray | torch.Tensor) -> Path:
    """Write a uint8 array as an idx file, gzip-compressed when `path` ends in `.gz` (tests and conversions).

    Args:
        path: the destination, written atomically.
        array: uint8 data of any rank from 1 to 255.

    Returns:
        The path written.
    """
    path = Path(path)
    array = np.ascontiguousarray(array.numpy() if isinstance(array, torch.Tensor) else array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx needs uint8 data with 1..255 dims, got {array.dtype} {array.shape}")
    header = bytes([0, 0, _IDX_UINT8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: the same array gives the same bytes
    write_bytes(path, data)
    return path


@contextlib.contextmanager
def _open_idx(path: Path) -> Iterator[IO[bytes]]:
    """The decompressed byte stream of an idx file, plain or `.gz`: a regular file of at most ARRAY_FILE_BYTES."""
    with open_regular(path, "idx file", ARRAY_FILE_BYTES) as f:
        if not path.name.endswith(".gz"):
            yield f
            return
        with gzip.GzipFile(fileobj=f, mode="rb") as unpacked:
            yield unpacked


def _read_upto(f: IO[bytes], path: Path, n: int) -> bytearray:
    """Up to `n` bytes, in chunks, so that nothing the size of a header's claim is allocated before the data is."""
    out = bytearray()
    try:
        while len(out) < n and (chunk := f.read(min(1 << 24, n - len(out)))):
            out += chunk
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a cut stream is an EOFError
        raise UserError(f"{path}: corrupt gzip ({exc}); expected a gzip-compressed idx file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return out


def _find_files(folders: list[Path]) -> dict[str, Path] | None:
    """The four files, as {stem: path}, of the first folder holding them all."""
    stems = [stem for pair in SPLIT_FILES.values() for stem in pair]
    for folder in folders:
        found = {}
        for stem in stems:
            # Uncompressed first: it is what a user who unpacked the files meant, and it skips the gzip decode. Not
            # only regular files: a FIFO or a link to a device there is refused by read_idx, not silently skipped.
            candidates = [folder / stem, folder / f"{stem}.gz"]
            hit = next((p for p in candidates if p.exists() and not p.is_dir()), None)
            if hit is None:
                break
            found[stem] = hit
        else:
            return found
    return None


def _fetch(name: str, folders: list[Path]) -> dict[str, Path]:
    """Fetch the missing `.gz` files into the cache, then find all four again."""
    base_url, md5s = SOURCES[name]
    dest = sources.cache_dir() / name
    for filename, md5 in md5s.items():
        if not (dest / filename).is_file():
            sources.download(base_url + filename, dest / filename, md5=md5, timeout=sources.DOWNLOAD_TIMEOUT_SECONDS)
    files = _find_files(folders)
    if files is None:
        raise sources.NotProvided(f"downloaded into {dest} but the files are still incomplete")
    return files


def _locate(name: str, root: str | os.PathLike | None, allow_download: bool) -> dict[str, Path]:
    folders = sources.search_dirs(name, root)
    names = ", ".join(f"{stem}[.gz]" for pair in SPLIT_FILES.values() for stem in pair)
    return sources.locate_or_download(
        find=lambda: _find_files(folders),
        fetch=lambda: _fetch(name, folders),
        allow_download=allow_download,
        searched=folders,
        source=f"from {SOURCES[name][0]}",
        wanted=lambda: f"{name}: files not found; put {names}",
    )


def _read_split(images_path: Path, labels_path: Path) -> TensorSplit:
    images = read_idx(images_path, ndim=3, item_shape=IMAGE_SIZE)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise UserError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; expected equal counts"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise UserError(
            f"{labels_path}: label {labels[bad]} at index {bad} is out of range, expected 0..{NUM_CLASSES - 1}"
        )
    return TensorSplit(
        images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28), shares memory with the decoded buffer
        targets=torch.from_numpy(labels).long(),
    )


def load_idx_dataset(
    name: str, class_names: tuple[str, ...], root: str | os.PathLike | None = None, download: bool = True
) -> RawDataset:
    """Find (or download) and read the four idx files of an MNIST-like dataset.

    Args:
        name: the dataset's registry name, also its folder name under the search dirs and the cache.
        class_names: the ten class names, in label order.
        root: a folder searched first (data.root).
        download: fetch the files into the cache when they are found nowhere.

    Returns:
        The official train and test splits.

    Raises:
        UserError: files missing and not downloadable, or a file is corrupt.
    """
    files = _locate(name, root, download)
    log.info("reading %s from %s", name, files[SPLIT_FILES["train"][0]].parent)
    splits = {split: _read_split(files[images], files[labels]) for split, (images, labels) in SPLIT_FILES.items()}
    info = DatasetInfo(
        name=name,
        task="classification",
        num_outputs=NUM_CLASSES,
        class_names=class_names,
        input_size=(1, *IMAGE_SIZE),
    )
    return RawDataset(train=splits["train"], test=splits["test"], info=info)


@DATASETS.register("fashion-mnist")
def fashion_mnist(root: str | None = None, download: bool = True, classes: list | None = None) -> RawDataset:
    """Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747): 60k/10k 28x28 grey clothing images.
    `classes` keeps a subset (indices or names), relabelled in the order given."""
    return select_classes(load_idx_dataset("fashion-mnist", FASHION_MNIST_CLASSES, root, download), classes)


@DATASETS.register("mnist")
def mnist(root: str | None = None, download: bool = True, classes: list | None = None) -> RawDataset:
    """MNIST handwritten digits (LeCun et al. 1998): 60k/10k 28x28 grey images; `classes` keeps a subset."""
    return select_classes(load_idx_dataset("mnist", MNIST_CLASSES, root, download), classes)


describes("fashion-mnist")(functools.partial(subset_info, "fashion-mnist", FASHION_MNIST_CLASSES, (1, *IMAGE_SIZE)))
describes("mnist")(functools.partial(subset_info, "mnist", MNIST_CLASSES, (1, *IMAGE_SIZE)))
