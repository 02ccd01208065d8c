"""Fuzzing the readers with hypothesis: every input file and value is read within bounds, and a bad one is one line.

Each class of hostile input found by the attack on the readers is a generator here, not a single file: resource
bombs from tiny files (YAML alias bombs in a config file, a `--set` value and a search space; pickle "billion
laughs" and claimed shapes in CIFAR batches and DeepLense object arrays; `.npy` headers claiming huge shapes in
sparse files; a grid search space too large to enumerate), deep nesting (YAML and JSON at depths from just past the
limit to 100,000), text encodings, FIFOs, links to /dev/zero and directories where a file is expected, duplicated
images and images in two splits, class names that are not UTF-8 or hold control characters, values YAML cannot
build, and config sections given as values. Each example runs in-process through `expect_one_line_error`
(fuzzing.py): exit status 2, one `error:` line naming the file or key, no traceback, no warning. The report cases
are the exception by design: one unreadable run among good ones is a marked row and exit 0 (`report` exits 2 only
when nothing can be reported, which the same generator also tries).

Every bomb example ends in well under a second (a `timeout` mark bounds each test, so a regression hangs nothing);
the whole file runs in about a minute on 2 vCPUs. `test_reader_categories_reached_their_minimums` checks the counts.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from fuzzing import (
    FUZZ,
    SMOKE,
    TRIED,
    VOC_IDS,
    WORDS,
    _png,
    check_minimums,
    cifar_valid,
    expect_one_line_error,
    scratch,
    sets,
    voc_tree,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import MAX_YAML_DEPTH, MAX_YAML_NODES, RunConfig
from visionbench.search.space import MAX_GRID_CELLS
from visionbench.utils.bounded import CONFIG_BYTES, JSON_BYTES, MAX_IMAGE_ELEMENTS, memory_bytes
from visionbench.utils.io import MAX_JSON_DEPTH
from visionbench.utils.safe_pickle import MAX_DEPTH as PICKLE_DEPTH
from visionbench.utils.safe_pickle import MAX_OBJECTS

MINIMUM = {  # per category: close to max_examples, less what hypothesis may legitimately filter out
    "yaml_bomb": 12,
    "yaml_deep": 8,
    "yaml_value": 6,
    "wrong_shape": 10,
    "encoding": 10,
    "special_file": 16,
    "pickle_bomb": 14,
    "npy_claim": 6,
    "grid_too_large": 6,
    "duplicate": 8,
    "class_name": 6,
    "report_unreadable": 8,
}


def _base_raw(runs: Path) -> dict:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["trainer"].update(out_dir=str(runs), epochs=1)
    raw["data"]["kwargs"].update(n_train=64, n_test=16)
    return raw


def _with_placeholder(raw: dict, dotted: str) -> str:
    """The YAML of `raw` with the value at `dotted` replaced by the text PLACEHOLDER (to splice raw YAML in)."""
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = "PLACEHOLDER"
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------------------------------------------
# YAML: alias bombs, deep nesting, values YAML cannot build, in every place a YAML value is read


@st.composite
def alias_bombs(draw) -> tuple[str, str]:
    """(one-line flow YAML, kind): a ladder of anchors, each level naming the previous one `width` times, so the
    text grows linearly and the expansion as width ** levels; or a chain that nests deeper than the depth limit."""
    kind = draw(st.sampled_from(["seq", "map", "merge", "chain"]))
    if kind == "chain":  # small, but every alias adds a level
        n = draw(st.integers(MAX_YAML_DEPTH + 2, 4 * MAX_YAML_DEPTH))
        return "[&a0 [x], " + ", ".join(f"&a{i} [*a{i - 1}]" for i in range(1, n)) + "]", kind
    levels = draw(st.integers(3, 12))
    width = draw(st.integers(3, 16))
    assume(width**levels > 2 * MAX_YAML_NODES)
    if kind == "seq":
        parts = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
        parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
        return "[" + ", ".join(parts) + "]", kind
    if kind == "map":
        parts = ["l0: &a0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
        parts += [
            f"l{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(width)) + "}" for i in range(1, levels)
        ]
        return "{" + ", ".join(parts) + "}", kind
    parts = ["&a0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]  # merge keys: PyYAML copies the pairs
    parts += [f"&a{i} {{<<: [" + ", ".join([f"*a{i - 1}"] * width) + "]}" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]", kind


@st.composite
def deep_yaml(draw) -> tuple[str, str]:
    """(YAML value, style) nested past the depth limit: flow sequences or mappings up to 20,000 deep, or block
    mappings (quadratic text, so at most 300 deep)."""
    style = draw(st.sampled_from(["flow_seq", "flow_map", "block"]))
    depth = draw(st.one_of(st.integers(MAX_YAML_DEPTH + 1, 400), st.sampled_from([1000, 10000, 20000])))
    if style == "flow_seq":
        return "[" * depth + "]" * depth, style
    if style == "flow_map":
        return "{a: " * depth + "1" + "}" * depth, style
    depth = min(depth, 300)
    return "\n" + "".join(f"{' ' * (i + 1)}a:\n" for i in range(depth - 1)) + f"{' ' * depth}a: 1", style


PLACES = ["config", "set", "space"]
CONFIG_KEYS = ["trainer.epochs", "optim.lr", "data.kwargs.size", "model.kwargs.width", "trainer.experiment"]


def _splice(text: str, value: str) -> str:
    """`text` with PLACEHOLDER replaced by `value`; a block value (starting with a newline) is indented under the
    placeholder's line."""
    if not value.startswith("\n"):
        return text.replace("PLACEHOLDER", value)
    line = next(line for line in text.splitlines() if "PLACEHOLDER" in line)
    indent = " " * (len(line) - len(line.lstrip()) + 1)
    return text.replace("PLACEHOLDER", "\n".join(indent + part for part in value.strip("\n").splitlines()))


def _run_yaml_value(work: Path, capsys, category: str, value: str, place: str, key: str) -> None:
    """Put `value` (YAML text) at `key` of a config file, a `--set` override or a search space, and require one line
    naming that file or key."""
    folder = scratch(work)
    runs = folder / "runs"
    raw = _base_raw(runs)
    flow = value if not value.startswith("\n") else None  # a block value only fits in a file
    if place == "config" or flow is None and place == "set":
        path = folder / "bad.yaml"
        path.write_text(_splice(_with_placeholder(raw, key), value))
        expect_one_line_error(capsys, category, ["train", path], needle=str(path))
    elif place == "set":
        expect_one_line_error(capsys, category, ["train", SMOKE, *sets(f"trainer.out_dir={runs}", f"{key}={flow}")],
                              needle=f"--set {key}")  # fmt: skip
    else:
        config = folder / "base.yaml"
        config.write_text(yaml.safe_dump(raw))
        space = folder / "bad.space.yaml"
        space.write_text(_splice("sampler: grid\nparams:\n  optim.lr:\n    choice: PLACEHOLDER\n", value))
        expect_one_line_error(capsys, category, ["search", config, "--space", space], needle=str(space))
    assert not runs.exists(), "a refused input created a run directory"


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=15)
@given(bomb=alias_bombs(), place=st.sampled_from(PLACES), key=st.sampled_from(CONFIG_KEYS))
def test_yaml_alias_bombs_are_refused_before_anything_expands_them(work, capsys, bomb, place, key):
    _run_yaml_value(work, capsys, "yaml_bomb", bomb[0], place, key)


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=10)
@given(deep=deep_yaml(), place=st.sampled_from(PLACES), key=st.sampled_from(CONFIG_KEYS))
def test_yaml_nested_past_the_limit_is_one_line_not_a_recursion_error(work, capsys, deep, place, key):
    _run_yaml_value(work, capsys, "yaml_deep", deep[0], place, key)


UNBUILDABLE = st.one_of(
    st.sampled_from(["2001-13-45", "2024-02-30", "!!float x", "!!int y", "!!timestamp z", "!!bool maybe"]),
    st.integers(4400, 20000).map(lambda n: "9" * n),  # more digits than Python converts
    st.integers(4400, 20000).map(lambda n: "0x" + "f" * n),
)


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=8)
@given(value=UNBUILDABLE, key=st.sampled_from(CONFIG_KEYS))
def test_yaml_values_that_cannot_be_built_are_one_line_at_their_line(work, capsys, value, key):
    folder = scratch(work)
    path = folder / "bad.yaml"
    path.write_text(_with_placeholder(_base_raw(folder / "runs"), key).replace("PLACEHOLDER", value))
    line = expect_one_line_error(capsys, "yaml_value", ["train", path], needle=str(path))
    assert "at line" in line and len(line) < 400, line


# ---------------------------------------------------------------------------------------------------------------
# Sections given as values


def _sections() -> list[str]:
    found = []

    def walk(model, prefix: str) -> None:
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                found.append(prefix + name)
                walk(field.annotation, f"{prefix}{name}.")

    walk(RunConfig, "")
    return found + ["data.kwargs", "model.kwargs"]


SECTIONS = _sections()
NOT_MAPPINGS = st.one_of(st.integers(-5, 5), WORDS, st.lists(st.integers(0, 3), max_size=3), st.booleans(), st.none())


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=14)
@given(section=st.sampled_from(SECTIONS), value=NOT_MAPPINGS, how=st.sampled_from(["set", "file", "file_then_set"]))
def test_a_section_given_as_a_value_is_one_line_naming_it(work, capsys, section, value, how):
    folder = scratch(work)
    runs = folder / "runs"
    raw = _base_raw(runs)
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    if how == "set":
        argv = ["train", SMOKE, *sets(f"trainer.out_dir={runs}", f"{section}={text}")]
    else:
        path = folder / "bad.yaml"
        path.write_text(_with_placeholder(raw, section).replace("PLACEHOLDER", text))
        argv = ["train", path]
        if how == "file_then_set":  # a key inside the section that is a value
            argv += sets(f"{section}.inner=1")
    expect_one_line_error(capsys, "wrong_shape", argv, needle=section)
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# Text encodings: what YAML 1.2 allows reads as UTF-8 does; anything else is refused naming the file


def _spec_decodes(data: bytes) -> bool:
    """The YAML 1.2 rule (section 5.2), written independently of utils/bounded.py: a BOM names the encoding, else the
    zero bytes around the first (ASCII) character do, else UTF-8."""
    boms = [(b"\xff\xfe\0\0", "utf-32-le"), (b"\0\0\xfe\xff", "utf-32-be"), (b"\xef\xbb\xbf", "utf-8")]
    boms += [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")]
    codec = next((c for bom, c in boms if data.startswith(bom)), None)
    if codec is None:
        head = data[:4]
        nulls = tuple(b == 0 for b in head)
        codec = {(True, True, True, False): "utf-32-be", (False, True, True, True): "utf-32-le"}.get(nulls)
        codec = codec or {(True, False): "utf-16-be", (False, True): "utf-16-le"}.get(nulls[:2], "utf-8")
    bom = next((len(b) for b, c in boms if data.startswith(b) and c == codec), 0)
    try:
        data[bom:].decode(codec)
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def undecodable(draw, text: str) -> bytes:
    """`text` (ASCII first character) in bytes that no encoding YAML allows decodes."""
    kind = draw(st.sampled_from(["latin1", "cp1252", "random", "utf16_surrogate", "utf8_bom_then_latin1", "cut"]))
    accented = draw(st.sampled_from(["é", "ü", "ø", "ß", "Ä"]))
    where = draw(st.integers(1, len(text)))
    spiced = text[:where] + accented + text[where:]
    if kind in ("latin1", "cp1252"):
        data = spiced.encode(kind)
    elif kind == "random":
        data = text[:1].encode() + draw(st.binary(min_size=8, max_size=200))
    elif kind == "utf16_surrogate":
        codec = draw(st.sampled_from(["utf-16-le", "utf-16-be"]))
        lone = b"\x00\xd8" if codec.endswith("le") else b"\xd8\x00"
        body = text.encode(codec)
        at = 2 * draw(st.integers(1, len(text)))
        data = draw(st.sampled_from([b"", "\ufeff".encode(codec)])) + body[:at] + lone + body[at:]
    elif kind == "utf8_bom_then_latin1":
        data = b"\xef\xbb\xbf" + spiced.encode("latin-1")
    else:  # a UTF-16 file cut in the middle of a character
        data = "\ufeff".encode("utf-16-le") + spiced.encode("utf-16-le") + b"\x41"
    assume(not _spec_decodes(data))
    return data


ENCODING_PLACES = ["config", "space", "csv", "voc_list"]


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=14)
@given(data=st.data(), place=st.sampled_from(ENCODING_PLACES))
def test_text_in_an_encoding_yaml_does_not_allow_is_refused_naming_the_file(work, capsys, data, place):
    folder = scratch(work)
    runs = folder / "runs"
    raw = _base_raw(runs)
    if place == "config":
        path = folder / "bad.yaml"
        path.write_bytes(data.draw(undecodable(yaml.safe_dump(raw, sort_keys=False))))
        argv = ["train", path]
    elif place == "space":
        config, path = folder / "base.yaml", folder / "bad.space.yaml"
        config.write_text(yaml.safe_dump(raw))
        path.write_bytes(data.draw(undecodable("sampler: grid\nparams:\n  optim.lr: {choice: [0.1, 0.01]}\n")))
        argv = ["search", config, "--space", path]
    elif place == "csv":
        for i in range(4):
            _png(folder / f"{i}.png", seed=i)
        path = folder / "train.csv"
        path.write_bytes(data.draw(undecodable("path,label\n" + "".join(f"{i}.png,c{i % 2}\n" for i in range(4)))))
        argv = ["train", SMOKE, *sets("data.name=csv_manifest", f"data.kwargs={{train: {path}}}")]
        argv += sets(f"trainer.out_dir={runs}")
    else:
        voc = voc_tree(folder)
        path = voc / "ImageSets" / "Main" / "trainval.txt"
        path.write_bytes(data.draw(undecodable("000001\n000002\n")))
        argv = _voc_argv(folder, runs)
    expect_one_line_error(capsys, "encoding", argv, needle=str(path))
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# FIFOs, links to /dev/zero and directories where a regular file is expected


def _voc_argv(folder: Path, runs: Path, extra: tuple[str, ...] = ()) -> list:
    return [
        "train",
        SMOKE,
        *sets("data.name=voc2007", "data.kwargs={}", f"data.root={folder}", "data.download=false"),
        *sets("data.image_size=16", f"trainer.out_dir={runs}", *extra),
    ]


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes() + array.tobytes()


CIFAR = cifar_valid()
CIFAR_NAMES = sorted(CIFAR)


def _cifar_argv(root: Path, runs: Path) -> list:
    argv = ["train", SMOKE, *sets("data.name=cifar10", "data.kwargs={}", f"data.root={root}", "data.download=false")]
    return argv + sets(f"trainer.out_dir={runs}")


def _release_item(image, label) -> bytes:
    item = np.empty(2, dtype=object)
    item[0], item[1] = image, label
    buffer = io.BytesIO()
    np.save(buffer, item, allow_pickle=True)
    return buffer.getvalue()


RELEASE = _release_item(np.random.default_rng(2).random((16, 16), dtype=np.float32), 1e-23)


def _deeplense_argv(release: Path, runs: Path) -> list:
    argv = ["train", SMOKE, *sets("data.name=deeplense", f"data.kwargs={{path: {release}}}", "data.val_fraction=0")]
    return argv + sets(f"trainer.out_dir={runs}")


def _make_special(path: Path, kind: str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()


@st.composite
def special_files(draw) -> tuple[str, str]:
    where = draw(
        st.sampled_from(
            ["config", "space", "csv", "csv_image", "folder_image", "voc_xml", "voc_list", "voc_jpeg", "idx", "cifar"]
            + ["npy"]
        )
    )
    kinds = ["fifo", "dev_zero"] + (["directory"] if where in ("config", "space", "csv", "csv_image", "cifar") else [])
    return where, draw(st.sampled_from(kinds)), draw(st.integers(0, 3))


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=22)
@given(special=special_files())
def test_a_fifo_a_device_or_a_directory_where_a_file_belongs_is_one_line(work, capsys, special):
    where, kind, index = special
    folder = scratch(work)
    runs = folder / "runs"
    raw = _base_raw(runs)
    if where in ("config", "space"):
        config, space = folder / "base.yaml", folder / "s.space.yaml"
        config.write_text(yaml.safe_dump(raw))
        space.write_text("sampler: grid\nparams:\n  optim.lr: {choice: [0.1, 0.01]}\n")
        bad = config if where == "config" else space
        argv = ["search", config, "--space", space] if where == "space" else ["train", config]
    elif where in ("csv", "csv_image"):
        for i in range(4):
            _png(folder / f"{i}.png", seed=i)
        manifest = folder / "train.csv"
        manifest.write_text("path,label\n" + "".join(f"{i}.png,c{i % 2}\n" for i in range(4)))
        bad = manifest if where == "csv" else folder / f"{index}.png"
        argv = ["train", SMOKE, *sets("data.name=csv_manifest", f"data.kwargs={{train: {manifest}}}")]
        argv += sets(f"trainer.out_dir={runs}")
    elif where == "folder_image":
        for c in range(2):
            for i in range(3):
                _png(folder / "data" / "train" / f"c{c}" / f"{i}.png", seed=3 * c + i)
        bad = folder / "data" / "train" / "c1" / "1.png"
        argv = ["train", SMOKE, *sets("data.name=image_folder", "data.kwargs={}", f"data.root={folder / 'data'}")]
        argv += sets(f"trainer.out_dir={runs}")
    elif where.startswith("voc"):
        voc = voc_tree(folder)
        bad = {
            "voc_xml": voc / "Annotations" / "000002.xml",
            "voc_list": voc / "ImageSets" / "Main" / "test.txt",
            "voc_jpeg": voc / "JPEGImages" / "000003.jpg",
        }[where]
        argv = _voc_argv(folder, runs)
    elif where == "idx":
        root = folder / "fashion-mnist"
        root.mkdir()
        rng = np.random.default_rng(0)
        for split, n in (("train", 12), ("t10k", 6)):
            (root / f"{split}-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
            (root / f"{split}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, n, dtype=np.uint8)))
        bad = root / "t10k-labels-idx1-ubyte"
        argv = ["train", SMOKE, *sets("data.name=fashion-mnist", "data.kwargs={}", f"data.root={root}")]
        argv += sets("data.download=false", f"trainer.out_dir={runs}")
    elif where == "cifar":
        root = folder / "cifar"
        root.mkdir()
        for name, content in CIFAR.items():
            (root / name).write_bytes(content)
        bad = root / "data_batch_2"
        argv = _cifar_argv(root, runs)
    else:
        release = folder / "release"
        release.mkdir()
        for i in range(4):
            (release / f"axion_{i}.npy").write_bytes(RELEASE)
        bad = release / "axion_2.npy"
        argv = _deeplense_argv(release, runs)
    _make_special(bad, kind)
    expect_one_line_error(capsys, "special_file", argv, needle=bad.name)
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# Pickles that denote far more than they hold: in CIFAR batches and DeepLense object arrays


class _Reduce:
    """Pickles as `func(*args)` followed, when `state` is given, by BUILD(state)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


@st.composite
def pickle_bombs(draw) -> tuple[object, str]:
    """(object whose pickle is a bomb, kind)."""
    kind = draw(
        st.sampled_from(["laughs", "laughs_dict", "ndarray_call", "reconstruct_shape", "state_claim", "cycle", "deep"])
    )
    if kind in ("laughs", "laughs_dict"):
        levels, width = draw(st.integers(4, 12)), draw(st.integers(4, 16))
        assume(width**levels > 2 * MAX_OBJECTS)
        node: object = [draw(st.integers(0, 9))] * width
        for _ in range(levels - 1):
            node = [node] * width if kind == "laughs" else {f"k{j}".encode(): node for j in range(width)}
        return node, kind
    if kind == "ndarray_call":  # uninitialised memory of the claimed size
        return _Reduce(np.ndarray, ((draw(st.integers(10**8, 10**12)),),)), kind
    if kind == "reconstruct_shape":
        shape = (draw(st.integers(10**6, 10**12)),)
        return _Reduce(_reconstruct(), (np.ndarray, shape, b"b")), kind
    if kind == "state_claim":  # numpy 2.4 reads past a short list for an object array (a crash, not an error)
        n = draw(st.integers(2, 10**7))
        dtype = draw(st.sampled_from([np.dtype(object), np.dtype(np.uint8), np.dtype(np.float32)]))
        data = [1] if dtype.hasobject else b"\x00"
        return _Reduce(_reconstruct(), (np.ndarray, (0,), b"b"), (1, (n,), dtype, False, data)), kind
    if kind == "cycle":
        loop: list = [0]
        loop.append(loop)
        return loop, kind
    deep: list = []
    for _ in range(draw(st.integers(PICKLE_DEPTH + 1, 400))):
        deep = [deep]
    return deep, kind


def _npy_object_file(payload: bytes) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (2,)})
    return header.getvalue() + payload


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=18)
@given(bomb=pickle_bombs(), target=st.sampled_from(["cifar_labels", "cifar_data", "cifar_meta", "npy"]),
       protocol=st.integers(2, 5))  # fmt: skip
def test_pickle_bombs_are_refused_before_anything_expands_them(work, capsys, bomb, target, protocol):
    obj, _ = bomb
    folder = scratch(work)
    runs = folder / "runs"
    if target == "npy":
        release = folder / "release"
        release.mkdir()
        for i in range(4):
            (release / f"axion_{i}.npy").write_bytes(RELEASE)
        bad = release / "axion_bomb.npy"
        bad.write_bytes(_npy_object_file(pickle.dumps(obj, protocol=protocol)))
        argv = _deeplense_argv(release, runs)
    else:
        root = folder / "cifar"
        root.mkdir()
        for name, content in CIFAR.items():
            (root / name).write_bytes(content)
        if target == "cifar_meta":
            bad, content = root / "batches.meta", {b"label_names": obj}
        else:
            good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 7]}
            bad, content = root / "data_batch_3", {**good, (b"labels" if target == "cifar_labels" else b"data"): obj}
        bad.write_bytes(pickle.dumps(content, protocol=protocol))
        argv = _cifar_argv(root, runs)
    expect_one_line_error(capsys, "pickle_bomb", argv, needle=bad.name)
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# .npy headers claiming more than can be held: sparse files pass any size check, so elements are counted


def _sparse_npy(path: Path, shape: tuple[int, ...], descr: str) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
    with open(path, "wb") as f:
        f.write(header.getvalue() + b"\x01" * 4096)  # a little real data, the rest a hole
        f.truncate(len(header.getvalue()) + int(np.prod(shape, dtype=object)) * np.dtype(descr).itemsize)


@st.composite
def npy_claims(draw) -> tuple[str, tuple[int, ...], str]:
    """(where, claimed shape, dtype): one image beyond MAX_IMAGE_ELEMENTS in a release file or a simulated folder,
    or a simulated images.npy larger than half this machine's memory."""
    where = draw(st.sampled_from(["release", "simulated_image", "simulated_total"]))
    descr = draw(st.sampled_from(["<f4", "<f8", "|u1", "<i2"]))
    side = draw(st.integers(int(MAX_IMAGE_ELEMENTS**0.5) + 1, 40000))
    if where == "release":
        return where, draw(st.sampled_from([(1, side, side), (side, side)])), descr
    if where == "simulated_image":
        return where, (draw(st.integers(1, 4)), 1, side, side), "<f4"
    n = (memory_bytes() or 2**40) // (64 * 64 * 4) + draw(st.integers(1, 10**6))
    return where, (n, 1, 64, 64), "<f4"


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=8)
@given(claim=npy_claims())
def test_npy_headers_claiming_huge_shapes_are_counted_before_allocating(work, capsys, claim):
    where, shape, descr = claim
    folder = scratch(work)
    runs = folder / "runs"
    data = folder / "data"
    data.mkdir()
    if where == "release":
        for i in range(4):
            (data / f"axion_{i}.npy").write_bytes(RELEASE)
        bad = data / "axion_huge.npy"
        _sparse_npy(bad, shape, descr)
    else:
        bad = data / "images.npy"
        _sparse_npy(bad, shape, descr)
        np.save(data / "targets.npy", np.zeros(shape[0], dtype=np.float32))
        meta = {"format": "visionbench-lensing", "version": 1, "complete": True, "n": shape[0], "variant": "regression"}
        (data / "meta.json").write_text(json.dumps(meta))
    expect_one_line_error(capsys, "npy_claim", _deeplense_argv(data, runs), needle=bad.name)
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# Grid search spaces too large to enumerate


@st.composite
def huge_grids(draw) -> str:
    """The `params:` block of a space whose grid has more than MAX_GRID_CELLS cells."""
    kind = draw(st.sampled_from(["int", "float_step", "grid_points", "choice", "product"]))
    over = MAX_GRID_CELLS + 1
    if kind == "int":
        high = draw(st.one_of(st.integers(over, 10**12), st.just(10**9)))
        return f"  trainer.seed: {{int: [0, {high}]}}\n"
    if kind == "float_step":
        step = draw(st.floats(1e-300, 1e-6))
        return f"  optim.weight_decay: {{float: [0.0, 0.01], step: {step!r}}}\n"
    if kind == "grid_points":
        return f"  optim.lr: {{log_float: [1.0e-4, 0.1], grid_points: {draw(st.integers(over, 10**15))}}}\n"
    if kind == "choice":
        n = draw(st.integers(over, over + 500))
        return f"  trainer.seed: {{choice: [{', '.join(map(str, range(n)))}]}}\n"
    sizes = draw(st.lists(st.integers(10, 60), min_size=3, max_size=4).filter(lambda s: np.prod(s) > MAX_GRID_CELLS))
    keys = ["trainer.seed", "trainer.batch_size", "optim.lr", "optim.weight_decay"]
    lines = [f"  {keys[0]}: {{int: [0, {sizes[0] - 1}]}}\n", f"  {keys[1]}: {{int: [1, {sizes[1]}]}}\n"]
    lines += [f"  {keys[2]}: {{log_float: [1.0e-4, 0.1], grid_points: {sizes[2]}}}\n"]
    lines += [f"  {keys[3]}: {{float: [0.0, 0.01], grid_points: {s}}}\n" for s in sizes[3:]]
    return "".join(lines)


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=8)
@given(params=huge_grids())
def test_a_grid_too_large_is_counted_and_refused_before_it_is_built(work, capsys, params):
    folder = scratch(work)
    runs = folder / "runs"
    config, space = folder / "base.yaml", folder / "big.space.yaml"
    config.write_text(yaml.safe_dump(_base_raw(runs)))
    space.write_text("sampler: grid\nparams:\n" + params)
    line = expect_one_line_error(capsys, "grid_too_large", ["search", config, "--space", space], needle=str(space))
    assert "params" in line and f"{MAX_GRID_CELLS:,}" in line, line
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# The same image twice, or in two splits


ALIASES = ["same", "dot", "updown", "symlink", "hardlink", "absolute"]


def _alias(folder: Path, name: str, kind: str, n: int) -> str:
    if kind == "same":
        return name
    if kind == "dot":
        return f"./{name}"
    if kind == "updown":
        (folder / "sub").mkdir(exist_ok=True)
        return f"sub/../{name}"
    if kind == "absolute":
        return str(folder / name)
    link = folder / f"alias{n}.png"
    link.symlink_to(folder / name) if kind == "symlink" else link.hardlink_to(folder / name)
    return link.name


@st.composite
def duplicates(draw) -> dict:
    n = draw(st.integers(3, 8))
    return {
        "n": n,
        "first": draw(st.integers(0, n - 1)),
        "alias": draw(st.sampled_from(ALIASES)),
        "where": draw(st.sampled_from(["train", "across", "voc_list", "voc_overlap"])),
        "at": draw(st.integers(0, n)),
        "label": draw(st.sampled_from(["same", "other"])),
    }


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=12)
@given(dup=duplicates())
def test_an_image_listed_twice_or_in_two_splits_is_refused(work, capsys, dup):
    folder = scratch(work)
    runs = folder / "runs"
    if dup["where"].startswith("voc"):
        voc = voc_tree(folder)
        ids = VOC_IDS["trainval"]
        if dup["where"] == "voc_list":
            lines = [*ids]
            lines.insert(dup["at"] % 3, ids[dup["first"] % 2])
            bad = voc / "ImageSets" / "Main" / "trainval.txt"
            bad.write_text("\n".join(lines) + "\n")
            argv = _voc_argv(folder, runs)
        else:  # a test list sharing an image with the train list
            bad = voc / "ImageSets" / "Main" / "mine.txt"
            bad.write_text(f"{VOC_IDS['test'][0]}\n{ids[dup['first'] % 2]}\n")
            argv = _voc_argv(folder, runs, ("data.kwargs={test_set: mine}",))
            expect_one_line_error(capsys, "duplicate", argv, needle="also in train_set='trainval'")
            return
        expect_one_line_error(capsys, "duplicate", argv, needle=bad.name)
        return
    n = dup["n"]
    names = [f"{i}.png" for i in range(n)]
    for i, name in enumerate(names):
        _png(folder / name, seed=i)
    rows = [f"{name},c{i % 2}" for i, name in enumerate(names)]
    again = _alias(folder, names[dup["first"]], dup["alias"], 0)
    label = f"c{dup['first'] % 2}" if dup["label"] == "same" else "c9"
    train = folder / "train.csv"
    kwargs = f"{{train: {train}}}"
    if dup["where"] == "train":
        rows.insert(dup["at"], f"{again},{label}")
        bad = train
    else:
        bad = folder / "test.csv"
        _png(folder / "extra.png", seed=99)
        bad.write_text(f"path,label\nextra.png,c0\n{again},{label}\n")
        kwargs = f"{{train: {train}, test: {bad}}}"
    train.write_text("path,label\n" + "\n".join(rows) + "\n")
    argv = ["train", SMOKE, *sets("data.name=csv_manifest", f"data.kwargs={kwargs}", f"trainer.out_dir={runs}")]
    expect_one_line_error(capsys, "duplicate", argv, needle=f"{bad}, row ")
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# Class names that no JSON, CSV or plot can carry


@st.composite
def bad_class_names(draw) -> tuple[bytes, str]:
    """(folder name as bytes, or a CSV label as UTF-8, where)."""
    where = draw(st.sampled_from(["folder", "csv"]))
    # a CSV label is stripped of surrounding whitespace (a leading tab is not part of it): prefix, bad, suffix
    prefix = draw(st.text(string.ascii_letters, min_size=1 if where == "csv" else 0, max_size=4)).encode()
    if where == "folder" and draw(st.booleans()):  # not UTF-8
        bad = draw(st.sampled_from([b"\xe9", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
    else:
        bad = draw(st.sampled_from(["\n", "\t", "\r", "\x1b[31m", "\x7f", "\x00", "\u2028"])).encode()
    if where == "folder":
        assume(b"\x00" not in bad)
    return prefix + bad + b"x", where


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=8)
@given(name=bad_class_names())
def test_class_names_that_are_not_utf8_or_hold_control_characters_are_refused(work, capsys, name):
    raw_name, where = name
    folder = scratch(work)
    runs = folder / "runs"
    if where == "folder":
        train = folder / "data" / "train"
        for c, cls in enumerate([b"good", raw_name]):
            path = os.path.join(os.fsencode(train), cls)
            os.makedirs(path)
            for i in range(3):
                _png(Path(os.fsdecode(path)) / f"{i}.png", seed=3 * c + i)
        argv = ["train", SMOKE, *sets("data.name=image_folder", "data.kwargs={}", f"data.root={folder / 'data'}")]
        needle = str(train)
    else:
        for i in range(4):
            _png(folder / f"{i}.png", seed=i)
        manifest = folder / "train.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows([[f"{i}.png", "good" if i % 2 else raw_name.decode()] for i in range(4)])
        argv = ["train", SMOKE, *sets("data.name=csv_manifest", f"data.kwargs={{train: {manifest}}}")]
        needle = str(manifest)
    expect_one_line_error(capsys, "class_name", [*argv, *sets(f"trainer.out_dir={runs}")], needle=needle)
    assert not runs.exists()


# ---------------------------------------------------------------------------------------------------------------
# Report: one unreadable run among good ones is a marked row, and the rest of the report is written


def _write_run(exp: Path, name: str, seed: int) -> Path:
    run = exp / name
    run.mkdir(parents=True)
    config = {"data": {"name": "mnist"}, "model": {"name": "small_cnn"}, "trainer": {"epochs": 1, "seed": seed}}
    (run / layout.CONFIG).write_text(yaml.safe_dump(config))  # no metrics.csv: no figures to draw, a fast report
    final, best = {"epoch": 1, "test/acc1": 0.9}, {"epoch": 1, "val/acc1": 0.9, "test/acc1": 0.9}
    summary = {"status": "finished", "model": "small_cnn", "dataset": "mnist", "main_metric": "acc1", "mode": "max"}
    summary |= {"epochs": 1, "epochs_completed": 1, "final": final, "best": best, "seconds": {"total": 1.0}}
    (run / layout.SUMMARY).write_text(json.dumps(summary))
    return run


@st.composite
def unreadable_runs(draw) -> tuple[str, object]:
    """(file, how it is broken)."""
    file = draw(st.sampled_from([layout.SUMMARY, layout.CONFIG]))
    kind = draw(st.sampled_from(["deep", "fifo", "dev_zero", "directory", "huge", "bomb", "not_text"]))
    if file == layout.SUMMARY and kind == "bomb":
        kind = "deep"
    depth = draw(st.one_of(st.integers(max(MAX_JSON_DEPTH, MAX_YAML_DEPTH) + 1, 500), st.sampled_from([20000, 100000])))
    return file, (kind, depth)


@pytest.mark.timeout(180)
@settings(FUZZ, max_examples=10)
@given(broken=unreadable_runs(), alone=st.sampled_from([False, False, False, True]), bomb=alias_bombs())
def test_one_unreadable_run_is_a_marked_row_and_the_report_is_written(work, capsys, broken, alone, bomb):
    file, (kind, depth) = broken
    exp = scratch(work) / "exp"
    if not alone:
        for seed in range(2):
            _write_run(exp, f"20260101-00000{seed}-good", seed)
    bad_run = _write_run(exp, "20260101-000009-bad", 9)
    bad = bad_run / file
    if kind in ("fifo", "dev_zero", "directory"):
        _make_special(bad, kind)
    elif kind == "huge":  # sparse: larger than the limit on disk's say-so, nothing written
        with open(bad, "wb") as f:
            f.truncate((JSON_BYTES if file == layout.SUMMARY else CONFIG_BYTES) + 1)
    elif kind == "not_text":
        bad.write_bytes(b"trainer: {experiment: caf\xe9}\n" if file == layout.CONFIG else b'{"status": "caf\xe9"}')
    elif kind == "bomb":
        bad.write_text(f"data: {{name: mnist}}\nbomb: {bomb[0]}\n")
    elif file == layout.SUMMARY:
        bad.write_text("[" * depth + "]" * depth)
    else:
        bad.write_text("data: " + "[" * depth + "]" * depth + "\n")
    if alone:
        expect_one_line_error(capsys, "report_unreadable", ["report", exp], needle="nothing to report")
        return
    code = main(["report", str(exp)])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err, f"exit {code}\n{err[-3000:]}"
    md = (exp / "report.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| 20260101-")}
    assert set(rows) == {"20260101-000000-good", "20260101-000001-good", "20260101-000009-bad"}, md
    assert "unreadable: " in rows["20260101-000009-bad"], rows["20260101-000009-bad"]
    assert all("90.00 %" in rows[f"20260101-00000{s}-good"] for s in range(2)), md
    assert (exp / "report.html").is_file()
    TRIED["report_unreadable"] += 1


# ---------------------------------------------------------------------------------------------------------------


def test_reader_categories_reached_their_minimums():
    check_minimums(MINIMUM)
