"""Pascal VOC 2007 and 2012 as multi-label classification, streamed from disk (http://host.robots.ox.ac.uk/pascal/VOC/).

Layout, as the official tarballs unpack: `VOCdevkit/VOCyyyy/` holding `JPEGImages/<id>.jpg`, `Annotations/<id>.xml`
and `ImageSets/Main/<split>.txt` (one image id per line). A split's target row has one entry per class of
`VOC_CLASSES`: 1 when the image holds at least one non-`difficult` object of the class, -1 ("ignore") when it
holds only `difficult` ones (1 with `include_difficult=True`), 0 otherwise. This is the VOC classification
convention: the devkit scores such images as neither positive nor negative.

Annotations are parsed once per call with `xml.etree.ElementTree` and nothing is cached on disk (10k small files
parse in seconds). ElementTree never fetches external entities; on top of that any document with a DTD
(`<!DOCTYPE ...>`, which entity declarations need) is refused, as defusedxml's `forbid_dtd` does, so neither an
external entity nor an entity-expansion bomb in a foreign annotation can do anything. VOC annotations have no DTD.

Missing files are downloaded into the cache from the official tarballs (URLs and md5s as torchvision publishes
them, `torchvision/datasets/voc.py`, BSD-3-Clause), checked by md5 and unpacked with `extract_tar`, which refuses
members that would land outside the cache. The 2012 test annotations are not public, so voc2012 tests on `val`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from visionbench.data import sources
from visionbench.data.base import STREAMED_INPUT_SIZE, FileSplit, RawDataset, StaticInfo, describes, streamed_info
from visionbench.errors import UserError
from visionbench.registry import DATASETS
from visionbench.utils.bounded import IMAGE_FILE_BYTES, LIST_BYTES, XML_BYTES, check_regular, read_bytes, read_text

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}

# An image id is a file stem: no separators and no leading dot, so a list file can never point outside the folder.
_IMAGE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class VocArchive:
    """One official tarball and the `ImageSets/Main` lists it provides."""

    filename: str
    md5: str
    image_sets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class VocYear:
    """Where one VOC edition lives and how to fetch it."""

    name: str  # registry name, also the folder name under the search dirs and the cache
    folder: str  # the folder under VOCdevkit/
    base_url: str
    archives: tuple[VocArchive, ...]
    default_train_set: str  # disjoint from the default test set: no image is ever in two splits
    default_test_set: str
    withheld_sets: tuple[str, ...] = ()  # lists whose annotations are not public

    def archive_for(self, image_set: str) -> VocArchive | None:
        return next((a for a in self.archives if image_set in a.image_sets), None)


VOC_SITE = "http://host.robots.ox.ac.uk/pascal/VOC/"
TRAINVAL_SETS = ("train", "val", "trainval")
VOC2007_ARCHIVES = (
    VocArchive("VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64", TRAINVAL_SETS),
    VocArchive("VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f", ("test",)),
)
VOC2012_ARCHIVES = (VocArchive("VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd", TRAINVAL_SETS),)
# Fields: name, folder, base URL, archives, default train and test sets, withheld sets. 2012 tests on val, so it
# trains on train (its trainval holds val); its test annotations are not public.
VOC2007 = VocYear("voc2007", "VOC2007", VOC_SITE + "voc2007/", VOC2007_ARCHIVES, "trainval", "test")
VOC2012 = VocYear("voc2012", "VOC2012", VOC_SITE + "voc2012/", VOC2012_ARCHIVES, "train", "val", ("test",))


# ---------------------------------------------------------------------------------------------------------------
# Annotations


class _DtdRefused(Exception):
    pass


class _NoDtdTreeBuilder(ET.TreeBuilder):
    """A TreeBuilder that stops the parse at `<!DOCTYPE`, before any entity declaration is read."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise _DtdRefused(name)


def parse_annotation(path: str | os.PathLike) -> tuple[set[int], set[int]]:
    """Read one VOC annotation file.

    Args:
        path: an `Annotations/<id>.xml` file.

    Returns:
        The class indices with at least one non-difficult object, and those with only difficult objects.

    Raises:
        UserError: the file is missing, is not well-formed XML, has a DTD, is not an `<annotation>`, or names an
            unknown class or a bad `<difficult>` value.
    """
    path = Path(path)
    data = read_bytes(path, "annotation", XML_BYTES)  # a regular file of at most 1 MiB: not /dev/zero
    parser = ET.XMLParser(target=_NoDtdTreeBuilder())
    try:
        parser.feed(data)
        root = parser.close()
    except _DtdRefused:
        raise UserError(f"{path}: refused an XML document type declaration (DTD); VOC annotations have none") from None
    except (ET.ParseError, LookupError) as exc:  # LookupError: an encoding declaration naming no known codec
        raise UserError(f"{path}: not well-formed XML ({exc}); expected a VOC <annotation>") from None
    if root.tag != "annotation":
        raise UserError(f"{path}: root element is <{root.tag}>, expected a VOC <annotation>")
    positive: set[int] = set()
    difficult: set[int] = set()
    for number, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise UserError(f"{path}: <object> {number} has no <name>; expected one of the 20 VOC classes")
        index = _CLASS_INDEX.get(name)
        if index is None:
            raise UserError(
                f"{path}: <object> {number} has unknown class {name!r}; expected one of {', '.join(VOC_CLASSES)}"
            )
        flag = (obj.findtext("difficult") or "0").strip()  # absent on some 2012 objects: not difficult
        if flag not in ("0", "1"):
            raise UserError(f"{path}: <object> {number} ({name}) has <difficult>{flag}</difficult>, expected 0 or 1")
        (difficult if flag == "1" else positive).add(index)
    return positive, difficult - positive


# ---------------------------------------------------------------------------------------------------------------
# Lookup and download


def _main_list(folder: Path, image_set: str) -> Path:
    return folder / "ImageSets" / "Main" / f"{image_set}.txt"


def _has_layout(folder: Path) -> bool:
    return all((folder / sub).is_dir() for sub in ("JPEGImages", "Annotations", "ImageSets/Main"))


def _candidates(spec: VocYear, root: str | os.PathLike | None) -> list[Path]:
    """Folders that may be VOCyyyy: under each search dir, as VOCdevkit's parent, as VOCdevkit, or VOCyyyy itself."""
    folders = []
    for base in sources.search_dirs(spec.name, root):
        folders += [base / "VOCdevkit" / spec.folder, base / spec.folder, base]
    return list(dict.fromkeys(folders))


def _first_voc(candidates: list[Path], image_set: str | None = None) -> Path | None:
    """The first folder with VOC's layout (and, when given, `image_set`'s list)."""
    return next(
        (f for f in candidates if _has_layout(f) and (image_set is None or _main_list(f, image_set).exists())), None
    )


def _merge_tree(src: Path, dst: Path) -> None:
    """Move every file of `src` into `dst`, `ImageSets/` last.

    A list file therefore appears only once all its images and annotations are in place, so an interrupted merge
    never leaves a split that the lookup accepts; the 2007 trainval and test tarballs merge into one folder.
    """
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(src).parts[0] == "ImageSets")  # stable: the rest keeps its order
    made: set[Path] = set()
    for file in files:
        target = dst / file.relative_to(src)
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        os.replace(file, target)


def _fetch(spec: VocYear, image_set: str) -> Path:
    """Fetch and verify the archive providing `image_set`, unpack it into the cache, and return the VOCyyyy folder."""
    archive = spec.archive_for(image_set)
    if archive is None:
        raise sources.NotProvided(f"no official archive provides {image_set}.txt")
    dest = sources.cache_dir() / spec.name
    path = dest / archive.filename
    if not (path.is_file() and sources.md5sum(path) == archive.md5):
        sources.download(
            spec.base_url + archive.filename, path, md5=archive.md5, timeout=sources.DOWNLOAD_TIMEOUT_SECONDS
        )
    final = dest / "VOCdevkit" / spec.folder
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest) as tmp:
        sources.extract_tar(path, tmp)
        unpacked = Path(tmp) / "VOCdevkit" / spec.folder
        if not _has_layout(unpacked):
            raise UserError(
                f"{path}: expected VOCdevkit/{spec.folder}/ with JPEGImages, Annotations and ImageSets/Main"
            )
        _merge_tree(unpacked, final)
    path.unlink()
    if not _main_list(final, image_set).is_file():
        raise sources.NotProvided(f"{archive.filename} unpacked into {final} but holds no {image_set}.txt")
    return final


def _locate(spec: VocYear, root: str | os.PathLike | None, image_set: str, allow_download: bool) -> Path:
    candidates = _candidates(spec, root)
    archive = spec.archive_for(image_set)

    def wanted() -> str:
        first_voc = _first_voc(candidates)
        missing = _main_list(first_voc, image_set) if first_voc else f"ImageSets/Main/{image_set}.txt"
        source = f", unpacked from {archive.filename}," if archive else ""
        return (
            f"{spec.name}: {missing} not found; put VOCdevkit/{spec.folder}/ (JPEGImages, Annotations, "
            f"ImageSets/Main){source}"
        )

    return sources.locate_or_download(
        find=lambda: _first_voc(candidates, image_set),
        fetch=lambda: _fetch(spec, image_set),
        allow_download=allow_download,
        searched=candidates,
        source=f"of {spec.base_url + archive.filename}" if archive else "",
        wanted=wanted,
    )


# ---------------------------------------------------------------------------------------------------------------
# Splits


def _read_ids(list_path: Path, image_names: set[str]) -> list[str]:
    """The image ids of a list file, each checked to have its JPEG and to be listed once; only the first field of a
    line counts."""
    text = read_text(list_path, "image list", LIST_BYTES)
    ids = []
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        image_id = fields[0]
        if not _IMAGE_ID.fullmatch(image_id):
            raise UserError(f"{list_path}, line {number}: {image_id!r} is not an image id; expected a file stem")
        if f"{image_id}.jpg" not in image_names:
            raise UserError(
                f"{list_path}, line {number}: image {image_id!r} is listed but JPEGImages/{image_id}.jpg does not exist"
            )
        if image_id in lines:
            raise UserError(
                f"{list_path}, line {number}: image {image_id!r} is listed again (first on line {lines[image_id]}); "
                "expected each image once"
            )
        lines[image_id] = number
        ids.append(image_id)
    if not ids:
        raise UserError(f"{list_path}: lists no images; expected one image id per line")
    return ids


def _read_split(folder: Path, image_set: str, include_difficult: bool, rows: dict[str, np.ndarray]) -> FileSplit:
    """Paths and multi-hot targets of one split; `rows` memoises annotations shared by both splits."""
    folder = Path(os.path.abspath(folder))
    jpeg_dir = folder / "JPEGImages"
    try:
        image_names = set(os.listdir(jpeg_dir))  # one listing instead of a stat per image
    except OSError as exc:
        raise UserError(f"{jpeg_dir}: cannot list: {exc.strerror or exc}") from None
    ids = _read_ids(_main_list(folder, image_set), image_names)
    targets = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.float32)  # (N, C)
    for i, image_id in enumerate(ids):
        key = str(folder / image_id)
        if key not in rows:
            positive, difficult = parse_annotation(folder / "Annotations" / f"{image_id}.xml")
            row = np.zeros(len(VOC_CLASSES), dtype=np.float32)
            row[list(difficult)] = 1.0 if include_difficult else -1.0
            row[list(positive)] = 1.0
            rows[key] = row
        targets[i] = rows[key]
    paths = [os.path.join(jpeg_dir, f"{image_id}.jpg") for image_id in ids]
    for path in paths:  # the streaming loader opens them later, in workers: a FIFO there would hang training
        check_regular(path, "image", IMAGE_FILE_BYTES)
    return FileSplit(paths=paths, targets=torch.from_numpy(targets))


def _check_image_set(spec: VocYear, image_set: str, arg: str) -> None:
    if not isinstance(image_set, str) or not _IMAGE_ID.fullmatch(image_set):
        raise UserError(f"{spec.name}: {arg}={image_set!r} is not an ImageSets/Main list name such as 'trainval'")
    if image_set in spec.withheld_sets:
        raise UserError(
            f"{spec.name}: {arg}={image_set!r}: the {spec.folder} {image_set} annotations are not public; use 'val'"
        )


def _image_sets(spec: VocYear, train_set: str | None, test_set: str | None) -> tuple[str, str]:
    """The `ImageSets/Main` lists to train and test on, the edition's defaults for None, checked."""
    train_set = spec.default_train_set if train_set is None else train_set
    test_set = spec.default_test_set if test_set is None else test_set
    _check_image_set(spec, train_set, "train_set")
    _check_image_set(spec, test_set, "test_set")
    return train_set, test_set


def load_voc(
    spec: VocYear,
    root: str | os.PathLike | None = None,
    download: bool = True,
    train_set: str | None = None,
    test_set: str | None = None,
    include_difficult: bool = False,
) -> RawDataset:
    """Find (or download) one VOC edition and read two of its splits as multi-label targets.

    Args:
        spec: VOC2007 or VOC2012.
        root: a folder searched first (data.root): VOCdevkit's parent, VOCdevkit, or VOCyyyy itself.
        download: fetch the official tarballs into the cache when a split's files are found nowhere.
        train_set: the `ImageSets/Main` list used for training; None means the edition's default ("trainval" for
            2007, "train" for 2012, whose trainval holds its val).
        test_set: the list used for testing; None means the edition's default ("test" for 2007, "val" for 2012).
        include_difficult: count a class seen only in `difficult` objects as present (1) instead of ignored (-1).

    Returns:
        Train and test FileSplits with float32 (N, 20) targets in {1, 0, -1}.

    Raises:
        UserError: files missing and not downloadable, a list, image or annotation is bad, or an image is in both
            lists (a test score on training images would be silently wrong).
    """
    train_set, test_set = _image_sets(spec, train_set, test_set)
    rows: dict[str, np.ndarray] = {}
    splits = {}
    for arg, image_set in (("train", train_set), ("test", test_set)):
        folder = _locate(spec, root, image_set, download)
        log.info("reading %s %s from %s", spec.name, image_set, folder)
        splits[arg] = _read_split(folder, image_set, include_difficult, rows)
    shared = set(splits["train"].paths).intersection(splits["test"].paths)
    if shared:
        example = Path(min(shared)).stem
        raise UserError(
            f"{spec.name}: {len(shared)} images of test_set={test_set!r} are also in train_set={train_set!r} "
            f"(e.g. {example}); expected lists with no image in common"
        )
    return RawDataset(
        train=splits["train"], test=splits["test"], info=streamed_info(spec.name, "multilabel", VOC_CLASSES)
    )


# ---------------------------------------------------------------------------------------------------------------
# Builders


@DATASETS.register("voc2007")
def voc2007(root: str | None = None, download: bool = True, **kwargs) -> RawDataset:
    """Pascal VOC 2007 multi-label (Everingham et al. 2010): 5,011 trainval / 4,952 test images, 20 classes;
    `kwargs` are load_voc's (train_set, test_set, include_difficult)."""
    return load_voc(VOC2007, root, download, **kwargs)


@DATASETS.register("voc2012")
def voc2012(root: str | None = None, download: bool = True, **kwargs) -> RawDataset:
    """Pascal VOC 2012 multi-label: 5,717 train / 5,823 val images, 20 classes; trains on train and tests on val by
    default; `kwargs` as voc2007's."""
    return load_voc(VOC2012, root, download, **kwargs)


def _describe(spec: VocYear, root, download, train_set=None, test_set=None, include_difficult=False) -> StaticInfo:
    """load_voc's arguments, named (no **kwargs, so static_info refuses a typo as load_voc does), checked."""
    _image_sets(spec, train_set, test_set)
    return StaticInfo(spec.name, "multilabel", len(VOC_CLASSES), STREAMED_INPUT_SIZE)


for _spec in (VOC2007, VOC2012):
    describes(_spec.name, streamed=True)(functools.partial(_describe, _spec))
