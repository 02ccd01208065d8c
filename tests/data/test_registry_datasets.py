"""Every registered dataset, built through `build_datasets` from a tiny sample: images of a dtype and shape the loaders
take, statistics for each channel, and labels that match the task kind.

The registry is the test matrix, so a dataset registered without an entry in SAMPLES fails here. An entry writes
the dataset's files in their on-disk format (with the writers of the dataset's own tests) or asks for a tiny
generated sample, and returns the DataConfig fields that load it. Streamed datasets are decoded as their
evaluation loader decodes them, before normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_cifar import make_cifar10, make_cifar100
from test_folder import make_tree, write_csv, write_png
from test_mnist import make_idx_dataset
from test_voc import make_voc

from visionbench.config import DataConfig
from visionbench.data import Datasets, FileSplit, StaticInfo, build_datasets, static_info
from visionbench.data.base import DESCRIPTIONS
from visionbench.data.stream import NO_SEED, FileDataset
from visionbench.errors import UserError
from visionbench.registry import DATASETS

SAMPLES: dict[str, Callable[[Path], dict[str, Any]]] = {}


def sample(*names: str) -> Callable:
    """Register a sample writer for `names`: it takes an empty folder and returns the DataConfig fields to load it."""

    def register(write: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
        SAMPLES.update(dict.fromkeys(names, write))
        return write

    return register


@sample("synthetic")
def _synthetic(folder: Path) -> dict[str, Any]:
    return {"kwargs": {"num_classes": 3, "n_train": 24, "n_test": 6, "channels": 3, "size": 8}}


@sample("digits")
def _digits(folder: Path) -> dict[str, Any]:
    return {}  # ships inside scikit-learn


@sample("mnist", "fashion-mnist", "fashion-mnist-mosaic")
def _idx(folder: Path) -> dict[str, Any]:
    make_idx_dataset(folder)  # the mosaic tiles fashion-mnist's files
    return {"root": str(folder)}


@sample("cifar10")
def _cifar10(folder: Path) -> dict[str, Any]:
    make_cifar10(folder)
    return {"root": str(folder)}


@sample("cifar100")
def _cifar100(folder: Path) -> dict[str, Any]:
    make_cifar100(folder)
    return {"root": str(folder), "kwargs": {"label_type": "coarse"}}


@sample("voc2007", "voc2012")
def _voc(folder: Path) -> dict[str, Any]:
    make_voc(folder, "VOC2007")
    make_voc(folder, "VOC2012")
    return {"root": str(folder), "image_size": 16}


@sample("image_folder")
def _image_folder(folder: Path) -> dict[str, Any]:
    make_tree(folder / "train", {"cat": 3, "dog": 2})
    make_tree(folder / "test", {"cat": 1, "dog": 1}, seed=7)
    return {"root": str(folder), "image_size": 16}


@sample("csv_manifest")
def _csv_manifest(folder: Path) -> dict[str, Any]:
    for i in range(6):
        write_png(folder / "img" / f"{i}.png", seed=i)
    write_csv(folder / "train.csv", "path,target", [f"img/{i}.png,{i / 2}" for i in range(4)])
    write_csv(folder / "test.csv", "path,target", ["img/4.png,-1.5", "img/5.png,2"])
    return {"kwargs": {"train": str(folder / "train.csv"), "test": str(folder / "test.csv")}, "image_size": 16}


@sample("deeplense")
def _deeplense(folder: Path) -> dict[str, Any]:
    # The DeepLense release's classification variant: one folder of single-image `.npy` files per class.
    rng = np.random.default_rng(0)
    for name in ("axion", "cdm", "no_sub"):
        (folder / name).mkdir()
        for i in range(3):
            np.save(folder / name / f"{i}.npy", rng.normal(size=(12, 12)).astype(np.float32))
    return {"kwargs": {"path": str(folder), "test_fraction": 0.25}}


def _classification(targets: torch.Tensor, n: int, k: int) -> None:
    assert targets.dtype == torch.int64 and targets.shape == (n,), (targets.dtype, targets.shape)
    assert n == 0 or 0 <= targets.min() <= targets.max() < k, targets


def _multilabel(targets: torch.Tensor, n: int, k: int) -> None:
    assert targets.is_floating_point() and targets.shape == (n, k), (targets.dtype, targets.shape)
    assert set(targets.unique().tolist()) <= {-1.0, 0.0, 1.0}, targets.unique()  # -1: ignore


def _regression(targets: torch.Tensor, n: int, k: int) -> None:
    assert targets.is_floating_point() and targets.shape == (n, k), (targets.dtype, targets.shape)
    assert torch.isfinite(targets).all(), targets


LABELS = {"classification": _classification, "multilabel": _multilabel, "regression": _regression}


def _images(data: Datasets, split: str) -> torch.Tensor:
    """A split's images as the model's input before normalisation: in memory as held, streamed as decoded."""
    images = data.split(split)
    if not isinstance(images, FileSplit):
        return images.images
    size = data.info.input_size[-1]
    decoded = FileDataset(images, size, data.info.input_size[0] == 1, augment=None)
    return torch.stack([decoded[i, NO_SEED][0] for i in range(len(images))])


@pytest.mark.parametrize("name", DATASETS.list())
def test_every_registered_dataset_gives_images_and_labels_of_its_task(name: str, tmp_path: Path) -> None:
    if name not in SAMPLES:
        pytest.fail(
            f"dataset {name!r} is registered without a sample: add a writer to SAMPLES in {Path(__file__).name}"
        )
    data = build_datasets(DataConfig(name=name, download=False, val_fraction=0.25, **SAMPLES[name](tmp_path)))
    info = data.info
    check_labels = LABELS.get(info.task)
    assert check_labels is not None, f"{name}: task {info.task!r} has no label check in LABELS"
    C = info.input_size[0]
    assert len(info.class_names) == info.num_outputs, (info.class_names, info.num_outputs)
    assert len(info.mean) == len(info.std) == C, f"{name}: mean {info.mean} and std {info.std} for {C} channels"
    for split in ("train", "val", "test"):
        images, targets = _images(data, split), data.split(split).targets
        N = len(targets)
        assert N > 0 and images.shape == (N, *info.input_size), f"{name} {split}: {tuple(images.shape)} {info}"
        if images.is_floating_point():
            assert 0 <= images.min() and images.max() <= 1, f"{name} {split}: float images outside [0, 1]"
        else:
            assert images.dtype == torch.uint8, f"{name} {split}: {images.dtype}"
        check_labels(targets, N, info.num_outputs)


def test_every_sample_is_of_a_registered_dataset() -> None:
    assert set(SAMPLES) <= set(DATASETS.list()), sorted(set(SAMPLES) - set(DATASETS.list()))


def test_every_registered_dataset_has_a_static_description() -> None:
    assert set(DESCRIPTIONS) == set(DATASETS.list()), set(DESCRIPTIONS) ^ set(DATASETS.list())


# data.image_size and data.grayscale change the input size differently for streamed and in-memory datasets
SIZINGS = {"as_sampled": {}, "resized": {"image_size": 24}, "grayscale": {"grayscale": True}}


@pytest.mark.parametrize("sizing", SIZINGS)
@pytest.mark.parametrize("name", DATASETS.list())
def test_static_info_is_what_the_builder_returns(name: str, sizing: str, tmp_path: Path) -> None:
    """What `visionbench models --config` counts with is what a run gets: the two never drift apart."""
    cfg = DataConfig(name=name, download=False, val_fraction=0.25, **{**SAMPLES[name](tmp_path), **SIZINGS[sizing]})
    try:
        info = build_datasets(cfg).info
    except UserError as e:  # data.grayscale on a dataset held in memory: refused both ways, with one message
        with pytest.raises(UserError) as refused:
            static_info(cfg)
        assert str(refused.value) == str(e), (str(refused.value), str(e))
        return
    described = static_info(cfg)
    built = StaticInfo(info.name, info.task, info.num_outputs, info.input_size)
    assert described == built, f"{name} {sizing}: described {described}, built {built}"


def test_static_info_of_an_image_folder_lists_class_folders_and_opens_no_image(tmp_path: Path) -> None:
    for name in ("cat", "dog", "[red]"):
        (tmp_path / "train" / name).mkdir(parents=True)  # no image at all: only the listing is read
    info = static_info(DataConfig(name="image_folder", root=str(tmp_path), image_size=64, grayscale=True))
    assert (info.task, info.num_outputs, info.input_size, info.missing) == ("classification", 3, (1, 64, 64), "")


def test_static_info_of_files_not_found_says_what_is_missing_and_knows_the_streamed_size(tmp_path: Path) -> None:
    gone = tmp_path / "nowhere"
    info = static_info(DataConfig(name="image_folder", root=str(gone)))
    assert info.num_outputs is None and info.input_size == (3, 224, 224), info
    assert str(gone / "train") in info.missing, info.missing
    info = static_info(DataConfig(name="csv_manifest", kwargs={"train": str(gone / "train.csv")}))
    assert info.num_outputs is None and info.task is None and str(gone / "train.csv") in info.missing, info
    info = static_info(DataConfig(name="deeplense", kwargs={"path": str(gone)}))
    assert info.num_outputs is None and info.input_size is None and str(gone) in info.missing, info


def test_static_info_of_a_manifest_reads_its_labels_without_the_images(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", "path,labels", ["gone/1.png,cat;dog", "gone/2.png,", "gone/3.png,bird"])
    info = static_info(DataConfig(name="csv_manifest", root=str(tmp_path), kwargs={"train": "train.csv"}))
    assert (info.task, info.num_outputs, info.missing) == ("multilabel", 3, ""), info


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("synthetic", {"num_classes": 1}, "num_classes=1"),
        ("synthetic", {"sizes": 8}, "sizes"),
        ("fashion-mnist", {"classes": ["Sneaker", "Sneaker"]}, "given twice"),
        ("cifar100", {"label_type": "medium"}, "label_type='medium'"),
        ("voc2007", {"train_set": "../x"}, "train_set"),
        ("voc2012", {"include_dificult": True}, "include_dificult"),
        ("csv_manifest", {}, "data.kwargs.train is required"),
    ],
)
def test_static_info_refuses_what_the_builder_refuses(name: str, kwargs: dict, expected: str) -> None:
    with pytest.raises(UserError, match=re.escape(expected)):
        static_info(DataConfig(name=name, kwargs=kwargs))


def test_static_info_of_class_subsets_counts_the_classes_kept() -> None:
    for name, classes in (("fashion-mnist", ["Sneaker", 0]), ("mnist", [3, 1, 4]), ("digits", ["7"])):
        assert static_info(DataConfig(name=name, kwargs={"classes": classes})).num_outputs == len(classes), name
