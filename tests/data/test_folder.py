"""Tests for the user's own images (`image_folder`, `csv_manifest`) on tiny PNGs written in tmp_path: class order and
targets, the test folder or the seeded carve, the three CSV tasks, paths relative to the CSV, one-line errors naming
the CSV and its 1-based row, and short CLI trainings of each task. No network."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import visionbench.tasks  # noqa: F401  (registers the tasks the CSV headers name)
from visionbench import layout
from visionbench.cli.main import main
from visionbench.data.folder import CSV_HEADERS, csv_manifest, image_folder, read_manifest
from visionbench.errors import UserError
from visionbench.registry import DATASETS, TASKS

EXPECTED_HEADERS = "path,label (classification), path,labels (multilabel) or path,target (regression)"


def write_png(path: Path, seed: int = 0, size: int = 8) -> Path:
    """A size x size random RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def make_tree(folder: Path, counts: dict[str, int], seed: int = 0) -> list[Path]:
    """`folder/<class>/<i>.png` for each class; returns the files in ImageFolder order (sorted classes, then names)."""
    files = []
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            files.append(write_png(folder / name / f"{i:03d}.png", seed=seed + 100 * k + i))
    return sorted(files, key=lambda p: (p.parent.name, p.name))


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in [header, *lines]))
    return path


def _one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, f"a UserError is one line: {message!r}"
    return message


# ---------------------------------------------------------------------------------------------------------------
# ImageFolder


def test_image_folder_classes_are_sorted_and_targets_follow_the_folders(tmp_path: Path) -> None:
    train = make_tree(tmp_path / "train", {"zebra": 2, "ant": 3, "mole": 1})
    test = make_tree(tmp_path / "test", {"mole": 1, "ant": 2}, seed=50)  # a test folder may lack a class
    write_png(tmp_path / "train" / "ant" / "nested" / "deep.png", seed=9)  # class folders are read recursively
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "train" / "ant" / ".hidden.png", seed=8)
    (tmp_path / "train" / ".cache").mkdir()  # hidden folders are not classes

    raw = image_folder(root=str(tmp_path))
    info = raw.info
    assert info.class_names == ("ant", "mole", "zebra"), "sorted, not creation order"
    assert (info.name, info.task, info.num_outputs) == ("image_folder", "classification", 3)
    expected_train = (
        [str(p) for p in train[:3]] + [str(tmp_path / "train/ant/nested/deep.png")] + [str(p) for p in train[3:]]
    )
    assert raw.train.paths == expected_train
    assert raw.train.targets.dtype == torch.int64
    assert raw.train.targets.tolist() == [0, 0, 0, 0, 1, 2, 2]
    assert raw.test.paths == [str(p) for p in test], "the test folder is used as it is, not carved"
    assert raw.test.targets.tolist() == [0, 0, 1]


def _index_order(paths: list[str], order: list[str]) -> list[int]:
    return [order.index(p) for p in paths]


def test_image_folder_without_test_folder_carves_a_seeded_disjoint_test_split(tmp_path: Path) -> None:
    files = [str(p) for p in make_tree(tmp_path / "train", {"b": 6, "a": 6, "c": 8})]
    raw = image_folder(root=str(tmp_path), test_fraction=0.25, seed=3)
    assert len(raw.test) == 5 and len(raw.train) == 15
    assert set(raw.train.paths).isdisjoint(raw.test.paths) and set(raw.train.paths + raw.test.paths) == set(files)
    for split in (raw.train, raw.test):
        index = _index_order(split.paths, files)
        assert index == sorted(index), "a carved split keeps the original order"
        names = [Path(p).parent.name for p in split.paths]
        assert split.targets.tolist() == [raw.info.class_names.index(n) for n in names], "targets follow their paths"
    again = image_folder(root=str(tmp_path), test_fraction=0.25, seed=3)
    assert (again.train.paths, again.test.paths) == (raw.train.paths, raw.test.paths), "same seed, same carve"
    other = image_folder(root=str(tmp_path), test_fraction=0.25, seed=4)
    assert other.test.paths != raw.test.paths, "the seed picks the test images"
    default = image_folder(root=str(tmp_path))
    assert len(default.test) == 4, "test_fraction defaults to 0.2"


def test_image_folder_test_dir_none_carves_even_when_a_test_folder_exists(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 5, "b": 5})
    make_tree(tmp_path / "test", {"a": 1})
    raw = image_folder(root=str(tmp_path), test_dir=None, test_fraction=0.2)
    assert len(raw.test) == 2 and all("/train/" in p for p in raw.test.paths)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-root", "image_folder: data.root is required"),
        ("no-train", "{root}/train: folder not found"),
        ("no-classes", "{root}/train: no class folders"),
        ("empty-class", "{root}/train/b: no image files"),
        ("unknown-test-class", "{root}/test/c: class 'c' has no folder in {root}/train"),
        ("fraction-and-test", "{root}/test: test_fraction=0.3 given but this test folder exists"),
        ("bad-fraction", "{root}/train: test_fraction=1.5, expected a number strictly between 0 and 1"),
        ("empty-test", "{root}/test: no image files in any class folder"),
    ],
)
def test_image_folder_bad_layout_is_a_one_line_user_error(tmp_path: Path, case: str, expected: str) -> None:
    root = tmp_path / "root"
    kwargs: dict = {"root": str(root)}
    if case == "no-root":
        kwargs["root"] = None
    elif case == "no-classes":
        (root / "train").mkdir(parents=True)
    elif case != "no-train":
        make_tree(root / "train", {"a": 3})
        if case == "empty-class":
            (root / "train" / "b").mkdir()
        elif case == "unknown-test-class":
            make_tree(root / "test", {"a": 1, "c": 1})
        elif case == "fraction-and-test":
            make_tree(root / "test", {"a": 1})
            kwargs["test_fraction"] = 0.3
        elif case == "bad-fraction":
            kwargs["test_fraction"] = 1.5
        elif case == "empty-test":
            (root / "test" / "a").mkdir(parents=True)
    with pytest.raises(UserError) as info:
        image_folder(**kwargs)
    message = _one_line(info)
    assert message.startswith(expected.format(root=root)), message


# ---------------------------------------------------------------------------------------------------------------
# CSV manifests


def test_csv_classification_names_classes_from_the_train_labels(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / "img" / f"{i}.png", seed=i)
    train = write_csv(tmp_path / "train.csv", "path,label", ["img/0.png,dog", "img/1.png, cat ", "img/2.png,dog"])
    test = write_csv(tmp_path / "test.csv", "path,label", ["img/3.png,cat"])
    raw = csv_manifest(train=str(train), test=str(test))
    assert (raw.info.name, raw.info.task, raw.info.class_names) == ("csv_manifest", "classification", ("cat", "dog"))
    assert raw.info.num_outputs == 2
    assert raw.train.paths == [str(tmp_path / "img" / f"{i}.png") for i in range(3)]
    assert raw.train.targets.dtype == torch.int64 and raw.train.targets.tolist() == [1, 0, 1]
    assert raw.test.paths == [str(tmp_path / "img/3.png")] and raw.test.targets.tolist() == [0]


def test_csv_declared_classes_keep_their_order_and_may_be_unused(tmp_path: Path) -> None:
    for i, name in enumerate("abc"):
        write_png(tmp_path / f"{name}.png", seed=i)
    train = write_csv(tmp_path / "train.csv", "path,label", ["a.png,dog", "b.png,cat"])
    test = write_csv(tmp_path / "test.csv", "path,label", ["c.png,cat"])
    raw = csv_manifest(train=str(train), test=str(test), classes=["dog", "bird", "cat"])
    assert raw.info.class_names == ("dog", "bird", "cat") and raw.info.num_outputs == 3
    assert raw.train.targets.tolist() == [0, 2]


def test_csv_multilabel_is_multi_hot_and_an_empty_cell_is_no_label(tmp_path: Path) -> None:
    for i in range(8):
        write_png(tmp_path / f"{i}.png", seed=i)
    labels = ["cat;dog", "", " dog ; dog ;", '"bird;cat"']
    train = write_csv(tmp_path / "train.csv", "path,labels", [f"{i}.png,{x}" for i, x in enumerate(labels)])
    test = write_csv(tmp_path / "test.csv", "path,labels", [f"{i + 4}.png,{x}" for i, x in enumerate(labels)])
    raw = csv_manifest(train=str(train), test=str(test))
    assert (raw.info.task, raw.info.class_names) == ("multilabel", ("bird", "cat", "dog"))
    expected = torch.tensor([[0, 1, 1], [0, 0, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    assert raw.train.targets.dtype == torch.float32
    torch.testing.assert_close(raw.train.targets, expected, rtol=0, atol=0)
    torch.testing.assert_close(raw.test.targets, expected, rtol=0, atol=0)


def test_csv_regression_targets_are_float_columns(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / f"{i}.png", seed=i)
    train = write_csv(tmp_path / "train.csv", "path,target", ["0.png,1.5", "1.png,-2e-3", "2.png, 7 "])
    write_png(tmp_path / "3.png", seed=3)
    test = write_csv(tmp_path / "test.csv", "path,target", ["3.png,0"])
    raw = csv_manifest(train=str(train), test=str(test))
    assert (raw.info.task, raw.info.class_names, raw.info.num_outputs) == ("regression", ("target",), 1)
    assert raw.train.targets.dtype == torch.float32 and raw.train.targets.shape == (3, 1)
    torch.testing.assert_close(raw.train.targets, torch.tensor([[1.5], [-2e-3], [7.0]]))
    torch.testing.assert_close(raw.test.targets, torch.tensor([[0.0]]))


def test_each_csv_header_names_a_registered_task_and_its_own_label_format() -> None:
    formats = list(CSV_HEADERS.values())
    assert [f.task for f in formats] == ["classification", "multilabel", "regression"]
    assert all(f.task in TASKS.list() for f in formats), TASKS.list()
    assert len(set(map(id, formats))) == len(formats), "two headers share a label format"


def test_csv_header_is_case_and_space_insensitive_and_a_bom_is_fine(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff Path , TARGET \r\na.png,3\r\n".encode())
    manifest = read_manifest(path)
    assert (manifest.task, manifest.header, manifest.rows, manifest.values) == ("regression", "path,target", [2], [3.0])


def test_csv_relative_paths_resolve_against_the_csv_folder_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    data = tmp_path / "data"
    a = write_png(data / "images" / "a.png", seed=1)
    b = write_png(data / "manifests" / "b.png", seed=2)
    d = write_png(data / "manifests" / "d.png", seed=5)
    c = write_png(tmp_path / "elsewhere" / "c.png", seed=3)  # named by an absolute path
    lines = ["../images/a.png,1", "b.png,2", "./d.png,3", f"{c},4"]
    write_csv(data / "manifests" / "train.csv", "path,target", lines)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in ("b.png", "d.png"):
        write_png(cwd / name, seed=4)  # decoys: the cwd is never searched
    monkeypatch.chdir(cwd)
    expected = [str(a), str(b), str(d), str(c)]
    assert read_manifest(data / "manifests" / "train.csv").files == expected
    # the CSV itself is named relative to data.root, or absolutely
    for kwargs in ({"root": str(data), "train": "manifests/train.csv"}, {"train": str(data / "manifests/train.csv")}):
        raw = csv_manifest(test_fraction=0.25, **kwargs)
        paths = raw.train.paths + raw.test.paths
        assert sorted(paths) == sorted(expected), kwargs
        targets = raw.train.targets.flatten().tolist() + raw.test.targets.flatten().tolist()
        assert [expected.index(p) + 1.0 for p in paths] == targets, "each target stays with its image"
    # without data.root a relative CSV path is taken from the cwd
    write_csv(cwd / "here.csv", "path,target", ["b.png,5", "d.png,6"])
    assert read_manifest("here.csv").files == [str(cwd / "b.png"), str(cwd / "d.png")]
    raw = csv_manifest(train="here.csv")
    assert sorted(raw.train.paths + raw.test.paths) == [str(cwd / "b.png"), str(cwd / "d.png")]


def test_csv_without_test_manifest_carves_a_seeded_fraction(tmp_path: Path) -> None:
    names = [f"{i}.png" for i in range(10)]
    for i, name in enumerate(names):
        write_png(tmp_path / name, seed=i)
    train = write_csv(tmp_path / "train.csv", "path,target", [f"{n},{i}" for i, n in enumerate(names)])
    raw = csv_manifest(train=str(train), test_fraction=0.3, seed=1)
    assert len(raw.train) == 7 and len(raw.test) == 3
    for split in (raw.train, raw.test):
        values = split.targets.flatten().tolist()
        assert values == sorted(values), "the carve keeps the manifest order"
        assert [Path(p).name for p in split.paths] == [names[int(v)] for v in values], "targets follow their paths"
    assert set(raw.train.paths).isdisjoint(raw.test.paths)
    again = csv_manifest(train=str(train), test_fraction=0.3, seed=1)
    assert again.test.paths == raw.test.paths and torch.equal(again.test.targets, raw.test.targets)


@pytest.mark.parametrize(
    ("header", "lines", "row", "expected"),
    [
        pytest.param(
            "path,target",
            ["a.png,1", "", "missing.png,2"],
            4,  # the blank line still counts: rows are the file's lines
            "image file 'missing.png' not found (looked for {folder}/missing.png)",
            id="missing-image",
        ),
        pytest.param("path,target", ["a.png,heavy"], 2, "target 'heavy' is not a number", id="non-numeric"),
        pytest.param("path,target", ["a.png,"], 2, "target '' is not a number", id="empty-target"),
        pytest.param("path,target", ["a.png,1", "a.png,nan"], 3, "target 'nan' is not finite", id="nan"),
        pytest.param("path,target", ["a.png,-inf"], 2, "target '-inf' is not finite", id="inf"),
        pytest.param("path,target", ["a.png,1e39"], 2, "target '1e39' is not finite in float32", id="float32"),
        pytest.param("path,target", ["a.png,1,2"], 2, "3 fields, expected 2 (path,target)", id="fields"),
        pytest.param("path,label", [",cat"], 2, "empty path; expected an image file", id="empty-path"),
        pytest.param("path,label", ["a.png, "], 2, "empty label; expected a class name", id="empty-label"),
        pytest.param(
            "file,y", ["a.png,1"], 1, f"unknown header 'file,y'; expected {EXPECTED_HEADERS}", id="unknown-header"
        ),
        pytest.param("path,label,extra", [], 1, "unknown header 'path,label,extra'", id="extra-column"),
    ],
)
def test_bad_csv_row_is_one_line_naming_the_file_and_row(
    tmp_path: Path, header: str, lines: list[str], row: int, expected: str
) -> None:
    write_png(tmp_path / "a.png")
    path = write_csv(tmp_path / "train.csv", header, lines)
    with pytest.raises(UserError) as info:
        csv_manifest(train=str(path))
    message = _one_line(info)
    prefix = f"{path}, row {row}: "
    assert message.startswith(prefix) and expected.format(folder=tmp_path) in message, message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", f"empty manifest; expected a header {EXPECTED_HEADERS}"),
        ("\n \n", "empty manifest; expected a header"),
        ("path,labels\n\n", "empty manifest: no rows after the header 'path,labels'"),
    ],
    ids=["empty", "blank-lines", "header-only"],
)
def test_empty_manifest_is_a_user_error_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "train.csv"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        read_manifest(path)
    message = _one_line(info)
    assert message.startswith(f"{path}: {expected}"), message


def test_missing_manifest_or_train_argument_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        csv_manifest(root=str(tmp_path), train="nope.csv")
    assert _one_line(info) == f"{tmp_path / 'nope.csv'}: CSV manifest not found"
    with pytest.raises(UserError, match="csv_manifest: data.kwargs.train is required"):
        csv_manifest(root=str(tmp_path))


def test_unknown_label_in_the_test_manifest_names_its_row(tmp_path: Path) -> None:
    for i, name in enumerate("abcd"):
        write_png(tmp_path / f"{name}.png", seed=i)
    train = write_csv(tmp_path / "train.csv", "path,label", ["a.png,cat", "b.png,dog"])
    test = write_csv(tmp_path / "test.csv", "path,label", ["c.png,dog", "d.png,cow"])
    with pytest.raises(UserError) as info:
        csv_manifest(train=str(train), test=str(test))
    assert _one_line(info) == (
        f"{test}, row 3: label 'cow' does not appear in {train}; expected one of the train labels"
    )
    with pytest.raises(UserError) as info:  # with declared classes, the message lists them
        csv_manifest(train=str(train), test=str(test), classes=["cat", "dog"])
    assert _one_line(info) == f"{test}, row 3: label 'cow' is not among the given classes (cat, dog)"
    multi = write_csv(tmp_path / "multi.csv", "path,labels", ["a.png,cat", "b.png,dog;emu"])
    with pytest.raises(UserError) as info:  # the train manifest is checked against declared classes too
        csv_manifest(train=str(multi), classes=["cat", "dog"])
    assert _one_line(info) == f"{multi}, row 3: label 'emu' is not among the given classes (cat, dog)"


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ("cat", "classes='cat', expected a non-empty list of class names"),
        (3, "classes=3, expected a non-empty list of class names"),
        ([], "classes=[], expected a non-empty list of class names"),
        (["cat", " "], "expected a non-empty list of class names"),
        (["cat", "dog", "cat"], "classes lists 'cat' twice"),
    ],
)
def test_bad_declared_classes(tmp_path: Path, classes, expected: str) -> None:
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", seed=1)
    train = write_csv(tmp_path / "train.csv", "path,label", ["a.png,cat", "b.png,dog"])
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        csv_manifest(train=str(train), classes=classes)


def test_manifests_of_different_tasks_or_unlabelled_multilabel_are_refused(tmp_path: Path) -> None:
    for i, name in enumerate("abc"):
        write_png(tmp_path / f"{name}.png", seed=i)
    train = write_csv(tmp_path / "train.csv", "path,label", ["a.png,cat", "b.png,dog"])
    test = write_csv(tmp_path / "test.csv", "path,target", ["c.png,1"])
    with pytest.raises(UserError) as info:
        csv_manifest(train=str(train), test=str(test))
    message = _one_line(info)
    assert message.startswith(f"{test}: header 'path,target' (regression) differs from {train}'s 'path,label'"), message
    with pytest.raises(UserError) as info:  # a regression has no classes: refused, not silently ignored
        csv_manifest(train=str(test), test=str(test), classes=["a"])
    assert _one_line(info) == f"{test}: classes=['a'] given but this manifest is a regression (path,target)"
    unlabelled = write_csv(tmp_path / "none.csv", "path,labels", ["a.png,", "b.png,;"])
    with pytest.raises(UserError, match=f"{unlabelled}: no row has a label"):
        csv_manifest(train=str(unlabelled))


def test_csv_manifest_and_image_folder_are_registered() -> None:
    assert DATASETS.get("csv_manifest") is csv_manifest and DATASETS.get("image_folder") is image_folder


# ---------------------------------------------------------------------------------------------------------------
# End to end


def _train(tmp_path: Path, data: dict, name: str = "mine") -> tuple[int, Path]:
    """Train small_cnn for one epoch on 16x16 streamed images; returns the exit code and the output folder."""
    out = tmp_path / "runs"
    cfg = {
        "data": {"image_size": 16, "num_workers": 0, "val_fraction": 0.2, **data},
        "model": {"name": "small_cnn"},
        "trainer": {
            "epochs": 1,
            "batch_size": 8,
            "eval_batch_size": 16,
            "device": "cpu",
            "out_dir": str(out),
            "checkpoint_every_minutes": None,
            "progress": "lines",
        },
    }
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return main(["train", str(config)]), out


def _summary(out: Path) -> tuple[Path, dict]:
    (path,) = out.glob(f"*/*/{layout.SUMMARY}")
    summary = json.loads(path.read_text())
    assert summary["status"] == "finished", summary
    return path.parent, summary


def test_train_regression_from_a_csv_manifest(tmp_path: Path, capsys) -> None:
    lines = [f"img/{i}.png,{i / 4:.2f}" for i in range(24)]
    for i in range(24):
        write_png(tmp_path / "data" / "img" / f"{i}.png", seed=i)
    write_csv(tmp_path / "data" / "train.csv", "path,target", lines[:16])
    write_csv(tmp_path / "data" / "test.csv", "path,target", lines[16:])
    kwargs = {"train": "train.csv", "test": "test.csv"}  # relative to data.root
    data = {"name": "csv_manifest", "root": str(tmp_path / "data"), "kwargs": kwargs}
    code, out = _train(tmp_path, data)
    assert code == 0, capsys.readouterr().err
    run, summary = _summary(out)
    assert summary["main_metric"] == "mae" and math.isfinite(summary["final"]["test/mae"]), summary["final"]
    rows = list(csv.DictReader((run / layout.artifact(layout.PREDICTIONS, suffix=".csv")).open()))
    assert len(rows) == 8 and {float(r["true"]) for r in rows} == {i / 4 for i in range(16, 24)}


def test_train_classification_from_an_image_folder(tmp_path: Path, capsys) -> None:
    make_tree(tmp_path / "data" / "train", {"b": 8, "a": 8})
    make_tree(tmp_path / "data" / "test", {"a": 3, "b": 3}, seed=500)
    code, out = _train(tmp_path, {"name": "image_folder", "root": str(tmp_path / "data")})
    assert code == 0, capsys.readouterr().err
    _, summary = _summary(out)
    assert summary["main_metric"] == "acc1" and 0.0 <= summary["final"]["test/acc1"] <= 1.0, summary["final"]
    assert "epoch 1/1" in capsys.readouterr().out


def test_train_multilabel_from_a_csv_manifest(tmp_path: Path, capsys) -> None:
    labels = ["cat", "dog", "cat;dog", "", "bird;cat", "dog;bird"]
    lines = [f"{i}.png,{labels[i % len(labels)]}" for i in range(24)]
    for i in range(24):
        write_png(tmp_path / "data" / f"{i}.png", seed=i)
    train = write_csv(tmp_path / "data" / "train.csv", "path,labels", lines)
    data = {"name": "csv_manifest", "kwargs": {"train": str(train), "test_fraction": 0.25}}
    code, out = _train(tmp_path, data)
    assert code == 0, capsys.readouterr().err
    _, summary = _summary(out)
    assert summary["main_metric"] == "map" and 0.0 <= summary["final"]["test/map"] <= 1.0, summary["final"]


def test_cli_csv_with_a_missing_image_is_exit_2_one_line_and_no_run_dir(tmp_path: Path, capsys) -> None:
    write_png(tmp_path / "data" / "a.png")
    train = write_csv(tmp_path / "data" / "train.csv", "path,target", ["a.png,1", "gone.png,2"])
    code, out = _train(tmp_path, {"name": "csv_manifest", "kwargs": {"train": str(train)}})
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{train}, row 3: image file 'gone.png' not found" in err, err
    assert not out.exists(), "bad input must not create a run directory"


def test_csv_test_fraction_with_a_test_manifest_is_refused(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", seed=1)
    train = write_csv(tmp_path / "train.csv", "path,target", ["a.png,1", "b.png,2"])
    with pytest.raises(UserError, match=r"test_fraction=0\.3 given with a test manifest .*train\.csv.*one of them"):
        csv_manifest(train=str(train), test=str(train), test_fraction=0.3)
    assert len(csv_manifest(train=str(train)).test) == 1, "without a test manifest the default fraction is 0.2"


# ---------------------------------------------------------------------------------------------------------------
# What is read is checked when it is read: duplicates, splits, file kinds, names, encodings


@pytest.mark.parametrize("alias", ["same", "dot", "symlink", "hardlink", "absolute"])
def test_a_csv_row_naming_an_image_again_is_refused_naming_both_rows(tmp_path: Path, alias: str) -> None:
    a = write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", seed=1)
    again = {"same": "a.png", "dot": "./sub/../a.png", "symlink": "link.png", "hardlink": "hard.png", "absolute": a}
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.png").symlink_to(a)
    (tmp_path / "hard.png").hardlink_to(a)
    path = write_csv(tmp_path / "train.csv", "path,label", ["a.png,cat", "b.png,dog", f"{again[alias]},dog"])
    with pytest.raises(UserError) as info:
        csv_manifest(train=str(path))
    message = _one_line(info)
    assert message.startswith(f"{path}, row 4: image ") and "is the same file as row 2's" in message, message


def test_no_image_is_in_both_the_train_and_the_test_manifest(tmp_path: Path) -> None:
    for i, name in enumerate("abc"):
        write_png(tmp_path / f"{name}.png", seed=i)
    (tmp_path / "alias.png").symlink_to(tmp_path / "b.png")
    train = write_csv(tmp_path / "train.csv", "path,label", ["a.png,cat", "b.png,dog"])
    test = write_csv(tmp_path / "test.csv", "path,label", ["c.png,cat", "alias.png,dog"])
    with pytest.raises(UserError) as info:
        csv_manifest(train=str(train), test=str(test))
    assert _one_line(info) == (
        f"{test}, row 3: image {tmp_path / 'alias.png'} is also row 3 of {train}; "
        "expected no image in both the train and the test manifest"
    )


def test_a_carved_test_split_never_shares_an_image_with_train(tmp_path: Path) -> None:
    names = [f"{i}.png" for i in range(10)]
    for i, name in enumerate(names):
        write_png(tmp_path / name, seed=i)
    path = write_csv(tmp_path / "train.csv", "path,label", [f"{n},{'ab'[i % 2]}" for i, n in enumerate(names)])
    for seed in range(5):
        raw = csv_manifest(train=str(path), test_fraction=0.3, seed=seed)
        assert set(raw.train.paths).isdisjoint(raw.test.paths) and len(raw.train) + len(raw.test) == 10


def test_an_image_folder_reaching_one_file_twice_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 2, "b": 2})
    (tmp_path / "train" / "b" / "copy.png").symlink_to(tmp_path / "train" / "a" / "000.png")
    with pytest.raises(UserError) as info:
        image_folder(root=str(tmp_path))
    message = _one_line(info)
    assert message.startswith(f"{tmp_path / 'train' / 'b' / 'copy.png'}: the same image file as ")
    (tmp_path / "train" / "b" / "copy.png").unlink()
    make_tree(tmp_path / "test", {"a": 1})
    (tmp_path / "test" / "a" / "001.png").hardlink_to(tmp_path / "train" / "b" / "000.png")
    with pytest.raises(UserError, match="the same image file as .*train/b/000.png; expected each image once"):
        image_folder(root=str(tmp_path))


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_an_image_that_is_not_a_regular_file_is_refused_when_read(tmp_path: Path, kind: str) -> None:
    make_tree(tmp_path / "train", {"a": 2, "b": 2})
    odd = tmp_path / "train" / "a" / "odd.png"
    {"fifo": lambda: os.mkfifo(odd), "dev_zero": lambda: odd.symlink_to("/dev/zero"), "directory": odd.mkdir}[kind]()
    what = {"fifo": "a FIFO", "dev_zero": "a character device", "directory": "a directory"}[kind]
    if kind != "directory":  # a folder in a class folder is searched for images, whatever its name
        with pytest.raises(UserError) as info:
            image_folder(root=str(tmp_path))
        assert _one_line(info) == f"{odd}: image file is {what}, expected a regular file"
    path = write_csv(tmp_path / "m.csv", "path,label", [f"{tmp_path / 'train' / 'b' / '000.png'},b", f"{odd},a"])
    with pytest.raises(UserError) as info:
        csv_manifest(train=str(path))
    assert _one_line(info) == f"{path}, row 3: {odd}: image file is {what}, expected a regular file"


def test_a_class_folder_whose_name_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a": 2})
    bad = os.path.join(os.fsencode(tmp_path / "train"), b"caf\xe9")
    os.mkdir(bad)
    write_png(Path(os.fsdecode(bad)) / "0.png")
    with pytest.raises(UserError) as info:
        image_folder(root=str(tmp_path))
    assert _one_line(info) == (
        f"{tmp_path / 'train'}: the class folder b'caf\\xe9' is not valid UTF-8; expected a UTF-8 folder name "
        "without control characters (rename the folder)"
    )


def test_class_names_with_control_characters_are_refused_and_markup_is_data(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"a\tb": 2, "c": 2})
    with pytest.raises(UserError, match=r"the class folder b'a\\tb' holds the control character '\\t'"):
        image_folder(root=str(tmp_path))
    markup = {"$\\foo{$": 3, "[red]": 3, "<b>x": 3}
    make_tree(tmp_path / "ok" / "train", markup)
    assert image_folder(root=str(tmp_path / "ok")).info.class_names == tuple(sorted(markup))
    for i in range(3):
        write_png(tmp_path / f"{i}.png", seed=i)
    path = write_csv(tmp_path / "m.csv", "path,label", ['0.png,"x\ny"', "1.png,[/x]", "2.png,$\\foo{$"])
    with pytest.raises(UserError) as info:
        csv_manifest(train=str(path))
    assert _one_line(info) == f"{path}, row 2: label 'x\\ny' holds the control character '\\n'; " + (
        "expected a class name without control characters"
    )
    path.write_text('path,label\n1.png,[/x]\n2.png,$\\foo{$\n0.png,"[red]"\n')
    assert csv_manifest(train=str(path)).info.class_names == ("$\\foo{$", "[/x]", "[red]")


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_csv_manifests_in_utf16_or_utf32_read_as_utf8_does(tmp_path: Path, codec: str) -> None:
    write_png(tmp_path / "é.png")
    write_png(tmp_path / "b.png", seed=1)
    text = "path,label\r\né.png,chat noir\r\nb.png,café\r\n"
    (tmp_path / "m.csv").write_bytes(text.encode(codec))
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.values == ["chat noir", "café"] and manifest.files == [
        str(tmp_path / "é.png"),
        str(tmp_path / "b.png"),
    ]


def test_a_csv_manifest_that_is_not_text_is_refused_at_its_byte(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    path = tmp_path / "m.csv"
    path.write_bytes(b"path,label\na.png,caf\xe9\n")  # latin-1
    with pytest.raises(UserError) as info:
        read_manifest(path)
    assert _one_line(info) == (
        f"{path}: CSV manifest is not valid UTF-8 (invalid continuation byte at byte offset 20); "
        "expected UTF-8 text (or UTF-16/UTF-32)"
    )
