"""`deeplense`: strong-lensing images, simulated here (`data/lensing_sim.py`) or from the original DeepLense release.

Two on-disk formats are read:

- ours (`visionbench data simulate-lensing`): `images.npy` float32 (N, 1, H, W), `targets.npy` and `meta.json`,
  memory-mapped;
- the DeepLense release: a folder of `.npy` files each holding one image, or an object array `[image, label]`
  (the axion files carry the particle mass). Object arrays are pickles, so they go through the restricted
  unpickler (numpy arrays and scalars only). A folder of class sub-folders (`no_sub/`, `cdm/`, `axion/` ...) is the
  3-class variant; a flat folder is regression. A label above zero is a mass in eV and becomes log10 m_a; a
  negative one is taken as log10 m_a already.

Every image is min-max normalised on its own to [0, 1] (the DeepLense preprocessing). The last `test_fraction`
of the images is the test split; the images are drawn independently, so this is a random split. When neither
`path` nor `root` is given, the images are simulated into the cache on first use (keyed by preset, seed, size
and lenstronomy version), so a config alone is enough to reproduce a run.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from visionbench.data.base import (
    CONVENTIONS,
    DatasetInfo,
    RawDataset,
    StaticInfo,
    TensorSplit,
    class_name_problem,
    describes,
)
from visionbench.errors import UserError, first_line
from visionbench.registry import DATASETS
from visionbench.utils.bounded import (
    ARRAY_FILE_BYTES,
    MAX_IMAGE_ELEMENTS,
    check_count,
    check_memory,
    check_regular,
    elements,
    open_regular,
    read_npy_header,
)
from visionbench.utils.safe_pickle import ArrayUnpickler, PickleBomb, RefusedGlobal

log = logging.getLogger(__name__)

NAME = "deeplense"
TARGET_NAME = "log10_m_a"
# Pixel values are lensed flux of no fixed range, min-max scaled per image (the DeepLense preprocessing); figures show
# the images as the model sees them
CONVENTIONS[NAME] = {"per_image_minmax": True, "display_denormalized": False}


def minmax(images: np.ndarray, chunk: int = 2048) -> torch.Tensor:
    """float32 (N, 1, H, W) copy of `images` with each image scaled to [0, 1]; a constant image becomes zeros."""
    out = torch.empty(images.shape, dtype=torch.float32)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[start : start + chunk], dtype=np.float32))  # a writable copy
        flat = x.reshape(len(x), -1)
        lo, hi = flat.min(1).values, flat.max(1).values
        scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        out[start : start + chunk] = ((flat - lo[:, None]) / scale[:, None]).reshape(x.shape)
    return out


def read_simulated(folder: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Images (normalised), targets and metadata of a folder written by `simulate-lensing`."""
    from visionbench.data import lensing_sim

    meta = lensing_sim.read_meta(folder)
    for name in ("images.npy", "targets.npy"):
        check_regular(folder / name, "array file")
    try:
        images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
        # memory-mapped too: a header claiming more data than the file holds fails here, not in an allocation
        targets = np.load(folder / "targets.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: cannot read the simulated arrays ({first_line(e)})") from None
    # A sparse file holds any claimed size on disk; minmax then allocates it in float32: count before allocating.
    if images.ndim == 4:
        check_count(elements(images.shape[1:]), MAX_IMAGE_ELEMENTS, folder / "images.npy", "one image")
        check_memory(elements(images.shape) * 4, folder / "images.npy", "the images in float32")
    if images.ndim != 4 or targets.ndim != 1 or len(images) != len(targets) or len(images) != meta.get("n"):
        raise UserError(
            f"{folder}: images.npy {images.shape} and targets.npy {targets.shape} "
            f"do not match meta.json n={meta.get('n')}"
        )
    if images.dtype.kind not in "biuf" or targets.dtype.kind not in "biuf":
        raise UserError(
            f"{folder}: images.npy is {images.dtype} {images.shape} and targets.npy {targets.dtype} {targets.shape}; "
            "expected real numbers, one target per image"
        )
    if meta.get("variant") == "classes":
        count = len(meta.get("class_names") or ())
        if targets.dtype.kind not in "biu" or (len(targets) and not (0 <= targets.min() and targets.max() < count)):
            raise UserError(f"{folder / 'targets.npy'}: expected class indices 0..{count - 1} (meta.json class_names)")
        return _finite(minmax(images), folder / "images.npy"), torch.from_numpy(targets.astype(np.int64)), meta
    targets = _finite(torch.from_numpy(np.array(targets, dtype=np.float32)), folder / "targets.npy")
    return _finite(minmax(images), folder / "images.npy"), targets, meta


def _finite(values: torch.Tensor, source: Path) -> torch.Tensor:
    """`values` unchanged; a NaN or infinity (which would only surface as a non-finite loss) is a UserError."""
    if not torch.isfinite(values).all():
        raise UserError(f"{source}: holds NaN or infinite values; expected finite numbers")
    return values


def load_release_file(path: Path) -> tuple[np.ndarray, float | None]:
    """One DeepLense release `.npy`: (image (H, W), label or None). Object arrays are read without running code."""
    try:
        with open_regular(path, ".npy file", ARRAY_FILE_BYTES) as f:
            shape, fortran, dtype = read_npy_header(f)
            if dtype != np.dtype(object):
                count, left = elements(shape), os.fstat(f.fileno()).st_size - f.tell()
                # both checked before np.fromfile allocates what the header claims (a sparse file can hold it)
                check_count(count, MAX_IMAGE_ELEMENTS, path, "the image")
                if count * dtype.itemsize > left:
                    raise ValueError(f"{left} bytes hold fewer than the {count} values of a {shape} array")
                image = np.fromfile(f, dtype=dtype, count=count)
                return _plain_image(image.reshape(shape, order="F" if fortran else "C"), path), None
            payload = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({first_line(e)})") from None
    except ValueError as e:
        raise UserError(f"{path}: not a readable .npy file ({first_line(e)})") from None
    try:
        obj = ArrayUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except RefusedGlobal as e:
        raise UserError(
            f"{path}: refused to unpickle {e.qualname}: only numpy arrays and numbers are allowed"
        ) from None
    except PickleBomb as e:
        raise UserError(f"{path}: refused: {e}; expected a DeepLense [image, label] file") from None
    except Exception as e:  # noqa: BLE001  (any failure inside the allowed constructors means a bad file)
        raise UserError(f"{path}: not a DeepLense [image, label] file ({first_line(e)})") from None
    if not isinstance(obj, np.ndarray) or obj.dtype != np.dtype(object):  # np.asarray would expand any list
        raise UserError(f"{path}: expected an object array [image, label], got {type(obj).__name__}")
    items = list(obj.reshape(-1))
    if len(items) != 2:
        raise UserError(f"{path}: expected [image, label], got an object array of {len(items)} items")
    image, label = items
    try:
        label = float(np.asarray(label).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        raise UserError(f"{path}: the label is not a number") from None
    if not math.isfinite(label):
        raise UserError(f"{path}: the label is {label}; expected a finite number (a mass in eV or log10 m_a)")
    return _plain_image(np.asarray(image), path), label


def _plain_image(array: np.ndarray, path: Path) -> np.ndarray:
    if isinstance(array, np.ndarray):
        check_count(array.size, MAX_IMAGE_ELEMENTS, path, "the image")
    try:
        if np.asarray(array).dtype.kind not in "biufO":  # complex, text, dates: float32 would garble or fail
            raise TypeError
        array = np.squeeze(np.asarray(array, dtype=np.float32))
    except (TypeError, ValueError):
        raise UserError(f"{path}: expected a numeric image, got an array of {np.asarray(array).dtype}") from None
    if array.ndim != 2:
        raise UserError(f"{path}: expected a single-channel image, got an array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise UserError(f"{path}: the image holds NaN or infinite values; expected finite pixel values")
    return array


def read_release(folder: Path) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...] | None]:
    """A DeepLense release folder: (images, targets, class names; None for a regression folder)."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.npy")))
    if subdirs:
        for d in subdirs:
            if problem := class_name_problem(d.name):
                raise UserError(f"{folder}: the class folder {os.fsencode(d.name)!r} {problem}; rename the folder")
        groups = [(i, sorted(d.glob("*.npy"))) for i, d in enumerate(subdirs)]
        classes = tuple(d.name for d in subdirs)
    else:
        groups = [(None, sorted(folder.glob("*.npy")))]
        classes = None
    images, targets = [], []
    for cls, files in groups:
        for path in files:
            image, label = load_release_file(path)
            if cls is None:
                if label is None:
                    raise UserError(f"{path}: no label; a regression folder needs [image, mass] files")
                if label > 0:
                    label = math.log10(label)  # a mass in eV
                targets.append(label)
            else:
                targets.append(cls)
            images.append(image)
    if not images:
        raise UserError(f"{folder}: no .npy files found (expected a DeepLense release folder)")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UserError(f"{folder}: images of different shapes {sorted(shapes)}")
    stacked = np.stack(images)[:, None]  # (N, 1, H, W)
    dtype = torch.float32 if classes is None else torch.int64
    return minmax(stacked), torch.tensor(targets, dtype=dtype), classes


@DATASETS.register(NAME)
def deeplense(
    root: str | None = None,
    download: bool = True,
    path: str | None = None,
    preset: str = "model_ii",
    n: int = 10000,
    seed: int = 0,
    variant: str = "regression",
    substructure: str = "axion",
    test_fraction: float = 0.2,
    workers: int = 1,
) -> RawDataset:
    """Strong-lensing images: log10 m_a regression or none/CDM/axion classification (min-max normalised)."""
    folder = _folder(root, path, test_fraction)
    if folder is None:
        from visionbench.data import lensing_sim

        folder = lensing_sim.cache_path(preset, n, seed, variant, substructure)
        if not (folder / "meta.json").is_file():
            if not download:
                raise UserError(f"{folder}: not simulated yet and data.download is false; run simulate-lensing")
            log.warning("simulating %d %s images into %s (once; cached)", n, preset, folder)
            lensing_sim.simulate(preset, n, folder, seed, variant, substructure, workers=workers)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (expected simulate-lensing output or a DeepLense release)")
    if (folder / "meta.json").exists() or (folder / "images.npy").exists():
        images, targets, meta = read_simulated(folder)
        classes = tuple(meta.get("class_names") or ()) if meta.get("variant") == "classes" else None
    else:
        images, targets, classes = read_release(folder)
    n_test = max(1, round(len(images) * test_fraction))
    if n_test >= len(images):
        raise UserError(f"{folder}: {len(images)} images are too few for test_fraction={test_fraction}")
    if classes is None:  # regression: one target, log10 m_a
        targets = targets.reshape(-1, 1)
    cut = len(images) - n_test
    shape = _info(classes, tuple(images.shape[1:]))
    info = DatasetInfo(
        shape.name, shape.task, shape.num_outputs, classes or (TARGET_NAME,), shape.input_size, **CONVENTIONS[NAME]
    )
    return RawDataset(TensorSplit(images[:cut], targets[:cut]), TensorSplit(images[cut:], targets[cut:]), info)


def _folder(root: str | None, path: str | None, test_fraction: float) -> Path | None:
    """The folder the images are read from (`path`, under `root` when relative, else `root`); None: the cache."""
    if not 0 < test_fraction < 1:
        raise UserError(f"data.kwargs.test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    folder = Path(path).expanduser() if path else (Path(root).expanduser() if root else None)
    if folder is not None and root and path and not folder.is_absolute():
        folder = Path(root).expanduser() / folder
    return folder


def _info(classes: tuple[str, ...] | None, input_size: tuple[int, int, int]) -> StaticInfo:
    """Classification over `classes`, or (None) regression of log10 m_a."""
    if classes is None:
        return StaticInfo(NAME, "regression", 1, input_size)
    return StaticInfo(NAME, "classification", len(classes), input_size)


@describes(NAME)
def _describe(root, path, preset, n, seed, variant, substructure, test_fraction, **_) -> StaticInfo:
    """From the simulation's meta.json and the header of images.npy, a release's class folders and one of its files,
    or (nothing simulated yet) the preset's image size."""
    from visionbench.data import lensing_sim

    folder = _folder(root, path, test_fraction)
    if folder is None:
        folder = lensing_sim.cache_path(preset, n, seed, variant, substructure)
        if not (folder / "meta.json").is_file():  # simulated on first use, at the preset's size
            side = lensing_sim.PRESETS[preset].num_pix
            return _info(lensing_sim.CLASS_NAMES if variant == "classes" else None, (1, side, side))
    if not folder.is_dir():
        return StaticInfo(NAME, None, None, None, f"{folder}: no such folder")
    if (folder / "meta.json").exists() or (folder / "images.npy").exists():
        meta = lensing_sim.read_meta(folder)
        try:
            with open_regular(folder / "images.npy", "array file", ARRAY_FILE_BYTES) as f:
                shape = read_npy_header(f)[0]
        except (OSError, ValueError) as e:
            raise UserError(f"{folder}: cannot read the simulated arrays ({first_line(e)})") from None
        if len(shape) != 4:
            raise UserError(f"{folder / 'images.npy'}: shape {shape}, expected (N, 1, H, W)")
        classes = tuple(meta.get("class_names") or ()) if meta.get("variant") == "classes" else None
        return _info(classes, tuple(shape[1:]))
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.npy")))
    first = next(iter(sorted((subdirs[0] if subdirs else folder).glob("*.npy"))), None)
    if first is None:
        return StaticInfo(NAME, None, None, None, f"{folder}: no .npy files found")
    image, _ = load_release_file(first)
    return _info(tuple(d.name for d in subdirs) if subdirs else None, (1, *image.shape))
