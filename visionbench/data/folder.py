"""The user's own images, streamed from disk: an ImageFolder tree or CSV manifests.

`image_folder` reads torchvision's ImageFolder layout, `root/train/<class>/<image>` (and `root/test/<class>/`),
classes in sorted order. `csv_manifest` reads CSV files whose header picks the task:

    path,label     classification, one class name per row
    path,labels    multilabel, class names separated by ';' (empty: no label)
    path,target    regression, one finite number per row

Relative image paths are resolved against the CSV file's own folder, so a manifest travels with its images.
Without a test folder or test manifest, a seeded `test_fraction` of the training images becomes the test split.
Only paths and targets are read here; images are decoded, resized and normalised (with ImageNet statistics) by the
streaming loader. Every check that fails raises a `UserError` naming the file and, for a CSV, the 1-based row
(the header is row 1).

What is read is checked here, once, so that nothing surfaces at the end of a training run: every image is a regular
file (not a FIFO that would hang a worker, nor /dev/zero) of at most IMAGE_FILE_BYTES; no image is listed twice or
lies in two splits (the same file, whatever path reaches it: compared by device and inode, so `./a.png`, a symlink
and a hard link are one image), since a duplicate in a carved split puts training images into the test set; class
names are valid UTF-8 without control characters (markup-like names such as `[red]` or `$\\foo{$` are data, shown
escaped). CSV manifests are text as utils/bounded.py decodes it: UTF-8 (with or without a BOM), UTF-16 or UTF-32.
"""

from __future__ import annotations

import abc
import csv
import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionbench.data.base import (
    STREAMED_INPUT_SIZE,
    FileSplit,
    RawDataset,
    StaticInfo,
    class_name_problem,
    describes,
    streamed_info,
)
from visionbench.errors import UserError
from visionbench.registry import DATASETS
from visionbench.utils.bounded import CSV_BYTES, IMAGE_FILE_BYTES, UnreadableFile, check_regular, open_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".npy")
DEFAULT_TEST_FRACTION = 0.2

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def carve_test(split: FileSplit, fraction: float, seed: int, source: str | os.PathLike) -> tuple[FileSplit, FileSplit]:
    """Split a seeded `fraction` of `split` off as the test split; both keep their original order.

    Args:
        split: the training images.
        fraction: the share that becomes the test split, in (0, 1).
        seed: fixes which images are drawn.
        source: the file or folder the images came from, for error messages.

    Returns:
        (train, test).

    Raises:
        UserError: `fraction` is outside (0, 1) or leaves no training image.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise UserError(f"{source}: test_fraction={fraction!r}, expected a number strictly between 0 and 1")
    n_test = max(1, round(len(split) * fraction))
    if n_test >= len(split):
        raise UserError(f"{source}: test_fraction={fraction} of {len(split)} images leaves no training images")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.take(order[n_test:].sort().values), split.take(order[:n_test].sort().values)


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder


def _class_dirs(folder: Path) -> list[str]:
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise UserError(f"{folder}: cannot list: {exc.strerror or exc}") from None
    for name in names:
        problem = class_name_problem(name)
        if problem:
            raise UserError(
                f"{folder}: the class folder {os.fsencode(name)!r} {problem}; expected a UTF-8 folder name without "
                "control characters (rename the folder)"
            )
    return names


def _image_files(folder: Path) -> list[str]:
    """Image files under `folder`, recursively and sorted; hidden files and folders are skipped."""
    found = []
    for parent, dirs, files in os.walk(folder):  # symlinked sub-folders are not followed: no cycles
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(parent, f)
            for f in sorted(files)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
    return found


FileId = tuple[int, int]  # (st_dev, st_ino): one file, whatever path, symlink or hard link reaches it


def _image_id(path: str) -> FileId:
    """Check an image file (regular, at most IMAGE_FILE_BYTES) and return its identity."""
    st = check_regular(path, "image file", IMAGE_FILE_BYTES)
    return st.st_dev, st.st_ino


def _scan_classes(
    folder: Path, class_names: list[str], present: list[str], require_images: bool, seen: dict[FileId, str]
) -> FileSplit:
    """The images of the `present` class folders; `seen` (file id -> path, shared by the splits) refuses an image
    reached twice."""
    paths: list[str] = []
    labels: list[int] = []
    for name in present:
        files = _image_files(folder / name)
        if require_images and not files:
            raise UserError(
                f"{folder / name}: no image files; expected {', '.join(IMAGE_EXTENSIONS)} (or remove the folder)"
            )
        for path in files:
            file_id = _image_id(path)
            if file_id in seen:
                raise UserError(
                    f"{path}: the same image file as {seen[file_id]}; expected each image once, in one class and "
                    "one split (remove the copy or link)"
                )
            seen[file_id] = path
        paths += files
        labels += [class_names.index(name)] * len(files)
    return FileSplit(paths=paths, targets=torch.tensor(labels, dtype=torch.int64))


_FOLDER_LAYOUT = "a folder holding train/<class>/<image files>"


@DATASETS.register("image_folder")
def image_folder(
    root: str | None = None,
    download: bool = True,
    train_dir: str = "train",
    test_dir: str | None = "test",
    test_fraction: float | None = None,
    seed: int = 0,
) -> RawDataset:
    """Images in `root/train/<class>/` (and `root/test/<class>/`, else a seeded carve); `download` is unused."""
    if root is None:
        raise UserError(f"image_folder: data.root is required: {_FOLDER_LAYOUT}")
    base = Path(os.path.abspath(Path(root).expanduser()))
    train_path = base / train_dir
    if not train_path.is_dir():
        raise UserError(f"{train_path}: folder not found; image_folder expects {train_path}/<class>/<image files>")
    class_names = _class_dirs(train_path)
    if not class_names:
        raise UserError(f"{train_path}: no class folders; expected {train_path}/<class>/<image files>")
    seen: dict[FileId, str] = {}
    train = _scan_classes(train_path, class_names, class_names, require_images=True, seen=seen)
    test_path = base / test_dir if test_dir else None
    if test_path is not None and test_path.is_dir():
        if test_fraction is not None:
            raise UserError(
                f"{test_path}: test_fraction={test_fraction} given but this test folder exists; "
                "expected one of them (set test_dir=None to carve the test split from train)"
            )
        test_classes = _class_dirs(test_path)
        unknown = [name for name in test_classes if name not in class_names]
        if unknown:
            raise UserError(
                f"{test_path / unknown[0]}: class {unknown[0]!r} has no folder in {train_path}; "
                "expected the test classes to be among the train classes"
            )
        test = _scan_classes(test_path, class_names, test_classes, require_images=False, seen=seen)
        if not len(test):
            raise UserError(f"{test_path}: no image files in any class folder; expected {test_path}/<class>/<image>")
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train, test = carve_test(train, fraction, seed, train_path)
    return RawDataset(train=train, test=test, info=streamed_info("image_folder", "classification", tuple(class_names)))


@describes("image_folder", streamed=True)
def _describe_image_folder(root: str | None, train_dir: str, **_) -> StaticInfo:
    """The classes counted from the train folder's sub-folders (a listing: no image is opened)."""
    task, name = "classification", "image_folder"
    if root is None:
        return StaticInfo(name, task, None, STREAMED_INPUT_SIZE, f"data.root is not set ({_FOLDER_LAYOUT})")
    train_path = Path(os.path.abspath(Path(root).expanduser())) / train_dir
    if not train_path.is_dir():
        return StaticInfo(name, task, None, STREAMED_INPUT_SIZE, f"{train_path}: folder not found")
    classes = _class_dirs(train_path)
    missing = "" if classes else f"{train_path}: no class folders"
    return StaticInfo(name, task, len(classes) or None, STREAMED_INPUT_SIZE, missing)


# ---------------------------------------------------------------------------------------------------------------
# CSV manifests


Lookup = Callable[[str, int], int]  # (class name, 1-based row) -> class index; raises on an unknown name


class LabelFormat(abc.ABC):
    """How a manifest's label column is written; the header picks one (CSV_HEADERS). `task` is the task kind it
    implies, as data: DatasetInfo.task and messages take it from here, so nothing here compares kinds."""

    task: str

    @abc.abstractmethod
    def parse(self, text: str, where: str) -> Any:
        """The value of one stripped cell; `where` (the file and row) starts every message."""

    @abc.abstractmethod
    def seen(self, values: list[Any]) -> list[str] | None:
        """The class names the rows hold, in row order; None where the column holds no class names."""

    @abc.abstractmethod
    def targets(self, values: list[Any], rows: list[int], num_classes: int, lookup: Lookup) -> torch.Tensor:
        """The targets of parsed `values` (one per row in `rows`), class names indexed by `lookup`."""


class _ClassName(LabelFormat):
    """`path,label`: one class name per row."""

    task = "classification"

    def parse(self, text: str, where: str) -> str:
        if not text:
            raise UserError(f"{where}: empty label; expected a class name")
        return _checked_label(text, where)

    def seen(self, values: list[str]) -> list[str]:
        return values

    def targets(self, values: list[str], rows: list[int], num_classes: int, lookup: Lookup) -> torch.Tensor:
        return torch.tensor([lookup(v, r) for v, r in zip(values, rows, strict=True)], dtype=torch.int64)  # (N,)


class _ClassNames(LabelFormat):
    """`path,labels`: class names separated by ';' (empty: no label); a name repeated on a row counts once."""

    task = "multilabel"

    def parse(self, text: str, where: str) -> list[str]:
        names = list(dict.fromkeys(name.strip() for name in text.split(";") if name.strip()))
        return [_checked_label(name, where) for name in names]

    def seen(self, values: list[list[str]]) -> list[str]:
        return [name for names in values for name in names]

    def targets(self, values: list[list[str]], rows: list[int], num_classes: int, lookup: Lookup) -> torch.Tensor:
        targets = torch.zeros(len(values), num_classes, dtype=torch.float32)  # (N, C)
        for i, (names, row) in enumerate(zip(values, rows, strict=True)):
            for name in names:
                targets[i, lookup(name, row)] = 1.0
        return targets


class _Number(LabelFormat):
    """`path,target`: one number per row, finite in float32."""

    task = "regression"

    def parse(self, text: str, where: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{where}: target {text!r} is not a number; expected a finite float") from None
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            raise UserError(f"{where}: target {text!r} is not finite in float32; expected a finite float")
        return value

    def seen(self, values: list[float]) -> None:
        return None

    def targets(self, values: list[float], rows: list[int], num_classes: int, lookup: Lookup) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).unsqueeze(1)  # (N, 1)


# Normalised header -> its label column's format: one instance each, so two manifests agree when their formats are one.
CSV_HEADERS: dict[tuple[str, ...], LabelFormat] = {
    ("path", "label"): _ClassName(),
    ("path", "labels"): _ClassNames(),
    ("path", "target"): _Number(),
}
_HEADER_CHOICES = [f"{','.join(header)} ({label_format.task})" for header, label_format in CSV_HEADERS.items()]
_EXPECTED_HEADERS = f"{', '.join(_HEADER_CHOICES[:-1])} or {_HEADER_CHOICES[-1]}"


@dataclasses.dataclass
class Manifest:
    """One parsed CSV manifest: per data row its 1-based row number, absolute image path and parsed value."""

    path: Path
    label_format: LabelFormat
    header: str  # as written, for messages
    rows: list[int]
    files: list[str]
    values: list[Any]  # what `label_format.parse` returned: str, list[str] or float
    ids: list[FileId] = dataclasses.field(default_factory=list)  # per row: the image file's identity

    @property
    def task(self) -> str:
        return self.label_format.task


def _checked_label(name: str, where: str) -> str:
    problem = class_name_problem(name)
    if problem:
        raise UserError(f"{where}: label {name!r} {problem}; expected a class name without control characters")
    return name


def _listed_image(resolved: str, image: str, where: str) -> FileId:
    """The identity of the image a manifest row names (`image` as written, `resolved` its absolute path)."""
    if not os.path.exists(resolved):
        raise UserError(f"{where}: image file {image!r} not found (looked for {resolved})")
    try:
        return _image_id(resolved)
    except UnreadableFile as exc:
        raise UserError(f"{where}: {exc}") from None


def read_manifest(path: str | os.PathLike, images: bool = True) -> Manifest:
    """Parse and check one CSV manifest; every image it names must exist, once.

    Args:
        path: the CSV file (UTF-8, an Excel byte-order mark is fine; UTF-16 or UTF-32 too).
        images: check the images (exist, regular, each once); False reads the labels alone, and `ids` stays empty.

    Returns:
        The manifest, image paths made absolute against the CSV's own folder.

    Raises:
        UserError: the file is missing, unreadable or not a regular file, the header is unknown, a row has the
            wrong number of fields, an image is missing or not a regular file, the same image is on two rows, a
            target is not a finite number, a label holds a control character, or there are no data rows.
    """
    path = Path(os.path.abspath(Path(path).expanduser()))
    folder = path.parent
    header: tuple[str, ...] = ()
    manifest: Manifest | None = None  # from the header on
    first_row: dict[FileId, int] = {}
    number = 0
    try:
        with open_text(path, "CSV manifest", CSV_BYTES) as f:
            for number, row in enumerate(csv.reader(f), 1):
                if not any(field.strip() for field in row):
                    continue  # blank line
                where = f"{path}, row {number}"
                if manifest is None:
                    header = tuple(field.strip().lower() for field in row)
                    if header not in CSV_HEADERS:
                        raise UserError(f"{where}: unknown header {','.join(row)!r}; expected {_EXPECTED_HEADERS}")
                    manifest = Manifest(path, CSV_HEADERS[header], ",".join(header), rows=[], files=[], values=[])
                    continue
                if len(row) != len(header):
                    raise UserError(f"{where}: {len(row)} fields, expected {len(header)} ({manifest.header})")
                image = row[0].strip()
                if not image:
                    raise UserError(f"{where}: empty path; expected an image file")
                resolved = os.path.normpath(os.path.join(folder, image))  # an absolute `image` stays as it is
                file_id = _listed_image(resolved, image, where) if images else None
                value = manifest.label_format.parse(row[1].strip(), where)
                if file_id is not None:
                    if file_id in first_row:
                        raise UserError(
                            f"{where}: image {image!r} is the same file as row {first_row[file_id]}'s; expected "
                            "each image once (a duplicate row would put one image in both train and test)"
                        )
                    first_row[file_id] = number
                    manifest.ids.append(file_id)
                manifest.rows.append(number)
                manifest.files.append(resolved)
                manifest.values.append(value)
    except UnreadableFile as exc:
        if exc.missing:
            raise UserError(f"{path}: CSV manifest not found") from None
        raise
    except OSError as exc:
        raise UserError(f"{path}: cannot read CSV manifest: {exc.strerror or exc}") from None
    except csv.Error as exc:
        raise UserError(f"{path}, row {number + 1}: malformed CSV ({exc})") from None
    if manifest is None:
        raise UserError(f"{path}: empty manifest; expected a header {_EXPECTED_HEADERS} and one row per image")
    if not manifest.rows:
        raise UserError(f"{path}: empty manifest: no rows after the header {manifest.header!r}; expected one per image")
    return manifest


def _resolve_csv(value: str | os.PathLike, root: str | None, arg: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise UserError(f"csv_manifest: {arg}={value!r}, expected the path of a CSV file")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (Path(root).expanduser() if root else Path.cwd()) / path
    return path


def _train_csv(root: str | None, train: str | None) -> Path:
    if train is None:
        raise UserError(
            "csv_manifest: data.kwargs.train is required: a CSV file with a header path,label|labels|target"
        )
    return _resolve_csv(train, root, "train")


def _class_names(train: Manifest, classes: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    seen = train.label_format.seen(train.values)
    if seen is None:  # a number per row: one output, named after the column
        if classes is not None:
            raise UserError(
                f"{train.path}: classes={classes!r} given but this manifest is a {train.task} ({train.header})"
            )
        return ("target",)
    if classes is None:
        if not seen:  # only ';'-separated names can leave every row empty
            raise UserError(f"{train.path}: no row has a label; expected ';'-separated class names in 'labels'")
        return tuple(sorted(set(seen)))
    valid = isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) and c.strip() for c in classes)
    if not valid:
        raise UserError(f"csv_manifest: classes={classes!r}, expected a non-empty list of class names")
    names = tuple(c.strip() for c in classes)
    for name in names:
        if problem := class_name_problem(name):
            raise UserError(
                f"csv_manifest: classes: {name!r} {problem}; expected class names without control characters"
            )
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise UserError(f"csv_manifest: classes lists {duplicate!r} twice; expected unique class names")
    return names


def _targets(manifest: Manifest, class_names: tuple[str, ...], known: str) -> torch.Tensor:
    """Targets of a manifest; a label outside `class_names` raises, naming the row and `known` (their origin)."""
    index = {name: i for i, name in enumerate(class_names)}

    def lookup(name: str, row: int) -> int:
        if name not in index:
            raise UserError(f"{manifest.path}, row {row}: label {name!r} {known}")
        return index[name]

    return manifest.label_format.targets(manifest.values, manifest.rows, len(class_names), lookup)


@DATASETS.register("csv_manifest")
def csv_manifest(
    root: str | None = None,
    download: bool = True,
    train: str | None = None,
    test: str | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    classes: list[str] | None = None,
) -> RawDataset:
    """Images listed in CSV manifests (`path,label|labels|target`); relative CSV paths are taken under `root`."""
    train_manifest = read_manifest(_train_csv(root, train))
    class_names = _class_names(train_manifest, classes)
    if classes is None:
        known = f"does not appear in {train_manifest.path}; expected one of the train labels"
    else:
        known = f"is not among the given classes ({', '.join(class_names)})"
    train_split = FileSplit(train_manifest.files, _targets(train_manifest, class_names, known))
    if test is None:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        train_split, test_split = carve_test(train_split, fraction, seed, train_manifest.path)
    elif test_fraction is not None:
        raise UserError(
            f"csv_manifest: test_fraction={test_fraction} given with a test manifest ({test}); expected one of them"
        )
    else:
        test_manifest = read_manifest(_resolve_csv(test, root, "test"))
        if test_manifest.label_format is not train_manifest.label_format:
            raise UserError(
                f"{test_manifest.path}: header {test_manifest.header!r} ({test_manifest.task}) differs from "
                f"{train_manifest.path}'s {train_manifest.header!r} ({train_manifest.task}); expected the same task"
            )
        shared = {file_id: row for file_id, row in zip(train_manifest.ids, train_manifest.rows, strict=True)}
        for file_id, row, image in zip(test_manifest.ids, test_manifest.rows, test_manifest.files, strict=True):
            if file_id in shared:
                raise UserError(
                    f"{test_manifest.path}, row {row}: image {image} is also row {shared[file_id]} of "
                    f"{train_manifest.path}; expected no image in both the train and the test manifest"
                )
        test_split = FileSplit(test_manifest.files, _targets(test_manifest, class_names, known))
    info = streamed_info("csv_manifest", train_manifest.task, class_names)
    return RawDataset(train=train_split, test=test_split, info=info)


@describes("csv_manifest", streamed=True)
def _describe_csv_manifest(root: str | None, train: str | None, classes: list[str] | None, **_) -> StaticInfo:
    """The task and classes of the train manifest, its labels read alone (no image is looked at)."""
    path = _train_csv(root, train)
    if not os.path.lexists(path):
        return StaticInfo("csv_manifest", None, None, STREAMED_INPUT_SIZE, f"{path}: CSV manifest not found")
    manifest = read_manifest(path, images=False)
    return StaticInfo("csv_manifest", manifest.task, len(_class_names(manifest, classes)), STREAMED_INPUT_SIZE)
