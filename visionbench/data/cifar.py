"""CIFAR-10 and CIFAR-100 from the official "python version" (https://www.cs.toronto.edu/~kriz/cifar.html).

The batches are Python-2 pickles (protocol 2) of dicts with byte-string keys: `b"data"` a uint8 array (N, 3072)
holding each 32x32 image channel-major (1024 red, then green, then blue), and `b"labels"` (CIFAR-10) or
`b"fine_labels"` / `b"coarse_labels"` (CIFAR-100) lists of ints. The meta files hold the class names.

A pickle can run any callable it names, so the batches are read with a restricted unpickler that resolves only
the few globals a plain numpy array needs and refuses everything else: a file from the internet or a shared disk
never executes code here. `write_cifar_batch` writes the same genuine Python-2 format, for tests.

Archive URLs and md5s are the official ones; the per-file md5s are those torchvision publishes
(`torchvision/datasets/cifar.py`, BSD-3-Clause). A file already on disk whose md5 differs is read anyway, with a
warning: users legitimately keep re-pickled or subsetted copies, and every field is validated regardless.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionbench.data import sources
from visionbench.data.base import DatasetInfo, RawDataset, StaticInfo, TensorSplit, class_name_problem, describes
from visionbench.errors import UserError
from visionbench.registry import DATASETS
from visionbench.utils.bounded import ARRAY_FILE_BYTES, read_bytes
from visionbench.utils.io import write_bytes
from visionbench.utils.safe_pickle import ArrayUnpickler, PickleBomb, RefusedGlobal, safe_globals

log = logging.getLogger(__name__)

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
IMAGE_SHAPE = (3, 32, 32)


@dataclasses.dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant's files live and what they should hash to."""

    name: str  # registry name, also the folder name under the search dirs and the cache
    folder: str  # the folder the archive unpacks to
    archive: str
    archive_md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    file_md5s: dict[str, str]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    file_md5s={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    # NOTE: the md5 printed on the CIFAR page and used by torchvision; "eb9058c3a382ffc7106e288f8a6b1ae6" is a typo.
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    file_md5s={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
)


def read_cifar_batch(path: str | os.PathLike, expected_md5: str | None = None) -> dict[Any, Any]:
    """Unpickle one CIFAR file without running foreign code.

    Args:
        path: a batch or meta file of the python version.
        expected_md5: the official md5; a mismatch is logged as a warning and the file is read anyway.

    Returns:
        The pickled dict, keys as stored (bytes for the official Python-2 files).

    Raises:
        UserError: the file is unreadable, not a pickle of a dict, or names a global other than the numpy array
            machinery.
    """
    path = Path(path)
    data = read_bytes(path, "CIFAR file", ARRAY_FILE_BYTES)  # a regular file, of at most 4 GiB
    if expected_md5 is not None and (actual := hashlib.md5(data).hexdigest()) != expected_md5:
        log.warning("%s: md5 %s differs from the official %s; reading it anyway", path, actual, expected_md5)
    try:
        obj = ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedGlobal as exc:
        raise UserError(f"{path}: refused to unpickle {exc.qualname}: only plain numpy arrays are allowed") from None
    except PickleBomb as exc:
        raise UserError(f"{path}: refused: {exc}; expected the official python version") from None
    except Exception as exc:  # a foreign pickle can fail inside any allowed constructor: all mean "bad file"
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise UserError(
            f"{path}: not a readable CIFAR pickle ({detail}); expected the official python version"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: unpickled a {type(obj).__name__}, expected a dict of arrays and lists")
    return obj


def _field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    # The official files have bytes keys; a copy re-pickled under Python 3 may have str keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    found = ", ".join(sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in batch))
    raise UserError(f"{path}: missing key {key!r}; found {found or 'no keys'}")


def _images(batch: dict[Any, Any], path: Path) -> np.ndarray:
    data = _field(batch, "data", path)
    n_pixels = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n_pixels:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: 'data' is {got}, expected a uint8 array of shape (N, {n_pixels})")
    return data.reshape(len(data), *IMAGE_SHAPE)  # (N, 3, 32, 32): rows are channel-major as distributed


def _labels(batch: dict[Any, Any], key: str, path: Path, count: int, num_classes: int) -> np.ndarray:
    raw = _field(batch, key, path)
    labels = np.asarray(raw) if isinstance(raw, (list, tuple, np.ndarray)) else None
    if labels is not None and labels.size == 0:
        labels = labels.astype(np.int64)  # an empty list comes back as float64
    if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: {key!r} is not a list of integers")
    if len(labels) != count:
        raise UserError(f"{path}: {len(labels)} entries in {key!r} but {count} images; expected one label per image")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(np.argmax((labels < 0) | (labels >= num_classes)))
        raise UserError(
            f"{path}: {key!r}[{bad}] = {labels[bad]} is out of range, expected 0..{num_classes - 1}",
        )
    return labels.astype(np.int64)


def _class_names(meta: dict[Any, Any], key: str, path: Path, count: int) -> tuple[str, ...]:
    raw = _field(meta, key, path)
    if not isinstance(raw, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in raw) or len(raw) != count:
        raise UserError(f"{path}: {key!r} should be a list of {count} class names")
    names = tuple(n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in raw)
    for name in names:
        if problem := class_name_problem(name):
            raise UserError(f"{path}: class name {name!r} in {key!r} {problem}; expected printable class names")
    return names


# ---------------------------------------------------------------------------------------------------------------
# Lookup and download


def _candidates(layout: CifarLayout, root: str | os.PathLike | None) -> list[Path]:
    """The folders that may hold `layout`'s files: under each search dir, its own folder, or the dir itself (data.root
    may point straight at the batches)."""
    candidates = []
    for base in sources.search_dirs(layout.name, root):
        candidates += [base / layout.folder, base]
    return list(dict.fromkeys(candidates))


def _fetch(layout: CifarLayout) -> Path:
    """Fetch and verify the archive, unpack it under the cache, and return the dataset folder."""
    dest = sources.cache_dir() / layout.name
    archive = dest / layout.archive
    if not (archive.is_file() and sources.md5sum(archive) == layout.archive_md5):
        sources.download(
            BASE_URL + layout.archive, archive, md5=layout.archive_md5, timeout=sources.DOWNLOAD_TIMEOUT_SECONDS
        )
    # Unpack beside the target and rename, so an interrupted extraction never leaves a half folder that looks real.
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp:
        sources.extract_tar(archive, Path(tmp))
        unpacked = Path(tmp) / layout.folder
        if not all((unpacked / f).is_file() for f in layout.files):
            raise UserError(f"{archive}: expected {layout.folder}/ with {', '.join(layout.files)}")
        final = dest / layout.folder
        if final.exists():  # an incomplete leftover in our own cache: the lookup did not accept it
            shutil.rmtree(final)
        os.replace(unpacked, final)
    archive.unlink()
    return final


def _locate(layout: CifarLayout, root: str | os.PathLike | None, allow_download: bool) -> Path:
    candidates = _candidates(layout, root)
    return sources.locate_or_download(
        find=lambda: next((f for f in candidates if all((f / name).exists() for name in layout.files)), None),
        fetch=lambda: _fetch(layout),
        allow_download=allow_download,
        searched=candidates,
        source=f"of {BASE_URL + layout.archive}",
        wanted=lambda: (
            f"{layout.name}: files not found; put {layout.folder}/ ({', '.join(layout.files)}), unpacked from "
            f"{layout.archive},"
        ),
    )


def _split(images: list[np.ndarray], labels: list[np.ndarray]) -> TensorSplit:
    return TensorSplit(
        images=torch.from_numpy(np.concatenate(images)),
        targets=torch.from_numpy(np.concatenate(labels)),
    )


# ---------------------------------------------------------------------------------------------------------------
# Builders


@DATASETS.register("cifar10")
def cifar10(root: str | None = None, download: bool = True) -> RawDataset:
    """CIFAR-10 (Krizhevsky 2009): 50k/10k 32x32 colour images in 10 classes."""
    layout = CIFAR10
    folder = _locate(layout, root, download)
    log.info("reading cifar10 from %s", folder)
    meta_path = folder / layout.meta_file
    shape = _describe_cifar10()
    class_names = _class_names(
        read_cifar_batch(meta_path, layout.file_md5s[layout.meta_file]), "label_names", meta_path, shape.num_outputs
    )

    def read(files: tuple[str, ...]) -> TensorSplit:
        images, labels = [], []
        for name in files:
            path = folder / name
            batch = read_cifar_batch(path, layout.file_md5s[name])
            images.append(_images(batch, path))
            labels.append(_labels(batch, "labels", path, len(images[-1]), len(class_names)))
        return _split(images, labels)

    info = DatasetInfo(shape.name, shape.task, shape.num_outputs, class_names, shape.input_size)
    return RawDataset(train=read(layout.train_files), test=read((layout.test_file,)), info=info)


@DATASETS.register("cifar100")
def cifar100(root: str | None = None, download: bool = True, label_type: str = "fine") -> RawDataset:
    """CIFAR-100 (Krizhevsky 2009): 50k/10k 32x32 colour images, 100 fine or 20 coarse classes."""
    shape = _describe_cifar100(label_type)
    num_classes = shape.num_outputs
    layout = CIFAR100
    folder = _locate(layout, root, download)
    log.info("reading cifar100 (%s labels) from %s", label_type, folder)
    meta_path = folder / layout.meta_file
    meta = read_cifar_batch(meta_path, layout.file_md5s[layout.meta_file])
    class_names = _class_names(meta, f"{label_type}_label_names", meta_path, num_classes)

    def read(name: str) -> TensorSplit:
        path = folder / name
        batch = read_cifar_batch(path, layout.file_md5s[name])
        images = _images(batch, path)
        return _split([images], [_labels(batch, f"{label_type}_labels", path, len(images), num_classes)])

    info = DatasetInfo(shape.name, shape.task, num_classes, class_names, shape.input_size)
    return RawDataset(train=read(layout.train_files[0]), test=read(layout.test_file), info=info)


@describes("cifar10")
def _describe_cifar10(**_) -> StaticInfo:
    return StaticInfo("cifar10", "classification", 10, IMAGE_SHAPE)


@describes("cifar100")
def _describe_cifar100(label_type: str, **_) -> StaticInfo:
    num_classes = {"fine": 100, "coarse": 20}.get(label_type) if isinstance(label_type, str) else None
    if num_classes is None:
        raise UserError(f"cifar100: label_type={label_type!r}, expected 'fine' or 'coarse'")
    return StaticInfo("cifar100", "classification", num_classes, IMAGE_SHAPE)


# ---------------------------------------------------------------------------------------------------------------
# Writing the Python-2 format (tests, and converting subsets)


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its per-type dispatch table can be overridden
    """Protocol 2 exactly as Python 2 and numpy 1.x wrote the CIFAR files.

    Python 3 pickles bytes at protocol 2 as `_codecs.encode(str, 'latin1')` and arrays via
    `numpy._core.multiarray`; Python 2 wrote its `str` as (SHORT_)BINSTRING and named
    `numpy.core.multiarray._reconstruct`. Both differences matter to readers, so both are reproduced.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    # The three globals a Python-2 numpy array pickle names, spelled as numpy 1.x spelled them.
    _py2_names: dict[int, tuple[str, str]] = {
        id(np.ndarray): ("numpy", "ndarray"),
        id(np.dtype): ("numpy", "dtype"),
        id(safe_globals()[("numpy.core.multiarray", "_reconstruct")]): ("numpy.core.multiarray", "_reconstruct"),
    }

    def save_global(self, obj: Any, name: str | None = None) -> None:
        py2_name = self._py2_names.get(id(obj))
        if py2_name is None:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + f"{py2_name[0]}\n{py2_name[1]}\n".encode("ascii"))
        self.memoize(obj)

    def reducer_override(self, obj: Any) -> tuple[Callable[..., Any], tuple[Any, ...], Any] | Any:
        if type(obj) is np.ndarray:
            if obj.dtype.hasobject or obj.dtype.fields is not None:
                raise ValueError(f"write_cifar_batch supports plain numeric arrays, got {obj.dtype}")
            # numpy's own reduce: (_reconstruct, (ndarray, (0,), 'b'), (version, shape, dtype, fortran, raw bytes))
            state = (1, tuple(obj.shape), obj.dtype, False, np.ascontiguousarray(obj).tobytes())
            return (safe_globals()[("numpy.core.multiarray", "_reconstruct")], (np.ndarray, (0,), b"b"), state)
        if isinstance(obj, np.dtype):
            # numpy 1.x under Python 2: dtype('u1', 0, 1) then state (3, byteorder, None, None, None, -1, -1, 0).
            byteorder, descr = obj.str[0], obj.str[1:]
            return (np.dtype, (descr.encode(), 0, 1), (3, byteorder.encode(), None, None, None, -1, -1, 0))
        return NotImplemented


def write_cifar_batch(path: str | os.PathLike, obj_dict: dict[Any, Any]) -> Path:
    """Pickle `obj_dict` as a genuine Python-2 protocol-2 CIFAR file (bytes become py2 `str`).

    Args:
        path: the destination.
        obj_dict: e.g. `{b"data": uint8 array (N, 3072), b"labels": [ints]}`; bytes keys as in the official files.

    Returns:
        The path written.
    """
    path = Path(path)
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj_dict)
    write_bytes(path, buffer.getvalue())
    return path
