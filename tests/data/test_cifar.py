"""Tests for the CIFAR readers: the genuine Python-2 pickle format, CIFAR-10/100 from small files written in it,
refusal of malicious pickles, md5 warnings, safe tar extraction and the download path. No network."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import pickletools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visionbench.data import cifar as cifar_module
from visionbench.data import sources
from visionbench.data.cifar import CIFAR10, CIFAR100, cifar10, cifar100, read_cifar_batch, write_cifar_batch
from visionbench.data.sources import extract_tar
from visionbench.errors import UserError
from visionbench.registry import DATASETS

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def batch(n: int, rng: np.random.Generator, labels: dict[bytes, int]) -> dict[bytes, object]:
    """One batch dict with the official keys: `labels` maps a label key to its number of classes."""
    obj: dict[bytes, object] = {
        b"batch_label": b"training batch 1 of 5",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    for key, num_classes in labels.items():
        obj[key] = [int(v) for v in rng.integers(0, num_classes, n)]
    return obj


def make_cifar10(folder: Path, n: int = 3, seed: int = 0) -> dict[str, dict[bytes, object]]:
    """Write a complete cifar-10-batches-py folder with `n` images per batch; returns the dicts written."""
    rng = np.random.default_rng(seed)
    written = {name: batch(n, rng, {b"labels": 10}) for name in (*CIFAR10.train_files, CIFAR10.test_file)}
    written["batches.meta"] = {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": n, b"num_vis": 3072}
    for name, obj in written.items():
        write_cifar_batch(folder / name, obj)
    return written


def make_cifar100(folder: Path, n: int = 5, seed: int = 0) -> dict[str, dict[bytes, object]]:
    rng = np.random.default_rng(seed)
    written = {name: batch(n, rng, {b"fine_labels": 100, b"coarse_labels": 20}) for name in ("train", "test")}
    written["meta"] = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    for name, obj in written.items():
        write_cifar_batch(folder / name, obj)
    return written


# ---------------------------------------------------------------------------------------------------------------
# The Python-2 format


def test_write_cifar_batch_is_genuine_python2_protocol2(tmp_path: Path) -> None:
    obj = batch(4, np.random.default_rng(0), {b"labels": 10})
    obj[b"big"] = b"x" * 300  # long enough for BINSTRING rather than SHORT_BINSTRING
    raw = write_cifar_batch(tmp_path / "data_batch_1", obj).read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    names = {name for name, _ in ops}
    assert ops[0] == ("PROTO", 2)
    assert {"SHORT_BINSTRING", "BINSTRING"} <= names, "Python 2 str must be (SHORT_)BINSTRING"
    assert not names & {"BINBYTES", "SHORT_BINBYTES", "BINUNICODE", "FRAME", "STACK_GLOBAL"}, names
    globals_ = [arg for name, arg in ops if name == "GLOBAL"]
    assert globals_ == ["numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"], globals_
    # The standard library reads it exactly as it reads the official files.
    back = pickle.load(io.BytesIO(raw), encoding="bytes")
    assert back.keys() == obj.keys()
    np.testing.assert_array_equal(back[b"data"], obj[b"data"])
    assert back[b"labels"] == obj[b"labels"] and back[b"filenames"] == obj[b"filenames"]
    # And so does the restricted reader.
    mine = read_cifar_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(mine[b"data"], obj[b"data"])
    assert mine[b"big"] == b"x" * 300


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_of_arrays_are_read_too(tmp_path: Path, protocol: int) -> None:
    obj = {b"data": np.arange(3072 * 2, dtype=np.uint16).astype(np.uint8).reshape(2, 3072), b"labels": [3, 4]}
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))  # protocol 2 under Python 3 uses _codecs.encode
    np.testing.assert_array_equal(read_cifar_batch(path)[b"data"], obj[b"data"])


# ---------------------------------------------------------------------------------------------------------------
# The builders


def test_cifar10_reads_the_python_version(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = make_cifar10(folder)
    raw = cifar10(root=str(tmp_path), download=False)
    assert raw.train.images.shape == (15, 3, 32, 32) and raw.train.images.dtype == torch.uint8
    assert raw.test.images.shape == (3, 3, 32, 32) and raw.train.targets.dtype == torch.int64
    first = written["data_batch_1"]
    # Channel-major rows: the first 1024 values are the red plane of image 0.
    np.testing.assert_array_equal(raw.train.images[0, 0].numpy().ravel(), first[b"data"][0, :1024])
    np.testing.assert_array_equal(raw.train.images[:3].numpy().reshape(3, -1), first[b"data"])
    expected = sum((written[name][b"labels"] for name in CIFAR10.train_files), [])
    assert raw.train.targets.tolist() == expected
    assert raw.test.targets.tolist() == written["test_batch"][b"labels"]
    assert raw.info.class_names == tuple(n.decode() for n in CIFAR10_NAMES)
    assert (raw.info.name, raw.info.task, raw.info.num_outputs, raw.info.input_size) == (
        "cifar10", "classification", 10, (3, 32, 32),
    )  # fmt: skip


@pytest.mark.parametrize(("label_type", "num_classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse(tmp_path: Path, label_type: str, num_classes: int) -> None:
    written = make_cifar100(tmp_path / "cifar-100-python")
    raw = DATASETS.get("cifar100")(root=str(tmp_path), download=False, label_type=label_type)
    assert raw.train.images.shape == (5, 3, 32, 32) and raw.test.images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(raw.test.images.numpy().reshape(5, -1), written["test"][b"data"])
    assert raw.train.targets.tolist() == written["train"][f"{label_type}_labels".encode()]
    assert raw.info.num_outputs == num_classes and len(raw.info.class_names) == num_classes
    assert raw.info.class_names[1] == f"{label_type}_1"


def test_cifar100_rejects_unknown_label_type(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="label_type='medium', expected 'fine' or 'coarse'"):
        cifar100(root=str(tmp_path), download=False, label_type="medium")


def test_root_may_point_at_the_batches_folder_and_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cifar10(tmp_path / "mine", n=2)
    make_cifar10(tmp_path / "env" / "cifar10" / "cifar-10-batches-py", n=4)
    monkeypatch.setenv("VISIONBENCH_DATA", str(tmp_path / "env"))
    assert len(cifar10(root=str(tmp_path / "mine"), download=False).test) == 2
    assert len(cifar10(root=None, download=False).test) == 4


def test_missing_files_without_download_list_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        cifar10(root=str(tmp_path / "nowhere"), download=False)
    message = str(info.value)
    for expected in [str(tmp_path / "nowhere"), "cifar-10-batches-py", "data_batch_5", "batches.meta"]:
        assert expected in message, f"{expected!r} missing from: {message}"
    assert "download=False" in message and "\n" not in message


def test_md5_mismatch_is_a_warning_and_data_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_cifar10(tmp_path)
    with caplog.at_level(logging.WARNING, logger="visionbench.data.cifar"):
        raw = cifar10(root=str(tmp_path), download=False)
    assert len(raw.train) == 15
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(CIFAR10.files), warned
    assert any(str(tmp_path / "data_batch_1") in m and CIFAR10.file_md5s["data_batch_1"] in m for m in warned)


# ---------------------------------------------------------------------------------------------------------------
# Malformed and malicious files


def _write_in_place_of(tmp_path: Path, name: str, payload: bytes) -> Path:
    make_cifar10(tmp_path)
    (tmp_path / name).write_bytes(payload)
    return tmp_path / name


class _SystemCall:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def malicious_payloads(marker: Path) -> dict[str, bytes]:
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"
    short_unicode = b"\x8c" + bytes([len(code)]) + code.encode()  # SHORT_BINUNICODE: length byte, utf-8
    return {
        "os.system": pickle.dumps({b"data": _SystemCall(f"touch {marker}")}, protocol=2),
        # Protocol 0, as a Python 2 attacker would write it: GLOBAL __builtin__.eval, then REDUCE.
        "builtins.eval": b"c__builtin__\neval\n(V" + code.encode() + b"\ntR.",
        # Protocol 4: SHORT_BINUNICODE module and name, STACK_GLOBAL, the code, TUPLE1, REDUCE.
        "builtins.exec": b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93" + short_unicode + b"\x85R.",
        # A numpy global that is not array reconstruction still counts as foreign code.
        "numpy.load": b"\x80\x02cnumpy\nload\nX\x03\x00\x00\x00/x\x85R.",
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.exec", "numpy.load"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "executed"
    path = _write_in_place_of(tmp_path, "data_batch_1", malicious_payloads(marker)[kind])
    with pytest.raises(UserError) as info:
        cifar10(root=str(tmp_path), download=False)
    assert not marker.exists(), "the payload ran"
    message = str(info.value)
    assert message.startswith(f"{path}: refused to unpickle "), message
    assert message.endswith("only plain numpy arrays are allowed")
    assert kind.split(".")[1] in message


def test_the_payloads_are_real(tmp_path: Path) -> None:
    """The refused pickles do run code under plain pickle.loads, so the refusal test is meaningful."""
    for kind in ("builtins.eval", "builtins.exec"):
        marker = tmp_path / f"executed-{kind}"
        pickle.loads(malicious_payloads(marker)[kind])
        assert marker.exists(), kind


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({b"labels": [1, 2, 3]}, "missing key 'data'"),
        ({b"data": np.zeros((3, 3000), np.uint8), b"labels": [1, 2, 3]}, "expected a uint8 array of shape (N, 3072)"),
        ({b"data": np.zeros((3, 3072), np.float32), b"labels": [1, 2, 3]}, "expected a uint8 array"),
        ({b"data": [[0] * 3072] * 3, b"labels": [1, 2, 3]}, "'data' is list"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2]}, "2 entries in 'labels' but 3 images"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2, 10]}, "'labels'[2] = 10 is out of range"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, -1, 0]}, "'labels'[1] = -1 is out of range"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [b"a", b"b", b"c"]}, "not a list of integers"),
        ([1, 2, 3], "unpickled a list, expected a dict"),
    ],
)
def test_wrong_contents_name_the_file(tmp_path: Path, obj: object, expected: str) -> None:
    buffer = io.BytesIO()
    cifar_module._Py2Pickler(buffer, protocol=2).dump(obj)
    path = _write_in_place_of(tmp_path, "data_batch_3", buffer.getvalue())
    with pytest.raises(UserError) as info:
        cifar10(root=str(tmp_path), download=False)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value), str(info.value)


def test_wrong_meta_names_the_file(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    write_cifar_batch(tmp_path / "batches.meta", {b"label_names": CIFAR10_NAMES[:9]})
    with pytest.raises(UserError, match="should be a list of 10 class names") as info:
        cifar10(root=str(tmp_path), download=False)
    assert str(tmp_path / "batches.meta") in str(info.value)


_VALID_BATCH = io.BytesIO()
cifar_module._Py2Pickler(_VALID_BATCH, protocol=2).dump(batch(2, np.random.default_rng(3), {b"labels": 10}))


# Garbled dtype arguments make numpy warn before the load fails or succeeds; that warning is expected here.
@pytest.mark.filterwarnings("ignore::numpy.exceptions.VisibleDeprecationWarning", "ignore::DeprecationWarning")
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_or_garbled_pickle_is_a_user_error(tmp_path: Path, data: st.DataObject) -> None:
    valid = _VALID_BATCH.getvalue()
    cut = data.draw(st.integers(0, len(valid) - 1), label="cut")
    garbled = bytearray(valid[:cut] if data.draw(st.booleans(), label="truncate") else valid)
    for _ in range(data.draw(st.integers(0, 3), label="flips") if garbled else 0):
        garbled[data.draw(st.integers(0, len(garbled) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "data_batch_1"
    path.write_bytes(bytes(garbled))
    try:
        obj = read_cifar_batch(path)
    except UserError as exc:
        assert str(exc).startswith(f"{path}: ")
    else:
        assert isinstance(obj, dict)


# ---------------------------------------------------------------------------------------------------------------
# Tar extraction and download


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return path


def file_member(name: str, content: bytes = b"hi") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def special_member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (file_member("../evil"), "contains '..'"),
        (file_member("ok/../../evil"), "contains '..'"),
        (file_member("/tmp/evil-absolute"), "absolute path"),
        (special_member("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (special_member("inner-link", tarfile.SYMTYPE, "ok/file"), "is a link"),
        (special_member("hard", tarfile.LNKTYPE, "ok/file"), "is a link"),
        (special_member("dev", tarfile.CHRTYPE), "not a regular file"),
        (special_member("fifo", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_extract_tar_refuses_unsafe_members(tmp_path: Path, member: tuple[tarfile.TarInfo, None], reason: str) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [file_member("ok/file"), member])
    dest = tmp_path / "out" / "inner"
    with pytest.raises(UserError) as info:
        extract_tar(archive, dest)
    assert str(archive) in str(info.value) and reason in str(info.value), str(info.value)
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (dest / "ok" / "file").exists(), "nothing may be written when any member is refused"


def test_extract_tar_extracts_plain_members(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar.gz", [file_member("top/a", b"A"), file_member("top/sub/b", b"B")])
    extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "sub" / "b").read_bytes() == b"B"


def test_extract_tar_rejects_a_non_archive(tmp_path: Path) -> None:
    (tmp_path / "a.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(UserError, match="expected a tar archive") as info:
        extract_tar(tmp_path / "a.tar.gz", tmp_path / "out")
    assert "\n" not in str(info.value), "tarfile's multi-line message must be folded into one line"


def test_download_verifies_extracts_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cifar10(tmp_path / "server" / "cifar-10-batches-py", n=2)
    tarball = tmp_path / "server.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "server" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    fetched = []

    def fake_download(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
        fetched.append((url, md5, timeout))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(tarball.read_bytes())
        return dest

    monkeypatch.setattr(sources, "download", fake_download)
    raw = cifar10(root=str(tmp_path / "nowhere"), download=True)
    assert len(raw.train) == 10 and len(raw.test) == 2
    assert fetched == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", CIFAR10.archive_md5, 10.0)]
    cache = tmp_path / "xdg-cache" / "visionbench" / "cifar10"
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"], "archive and temp dirs cleaned up"
    assert len(cifar10(root=None, download=False).test) == 2, "the next call finds the cached copy"


def test_download_of_a_hostile_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = make_tar(tmp_path / "hostile.tar.gz", [file_member("../../evil")])

    def fake_download(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(hostile.read_bytes())
        return dest

    monkeypatch.setattr(sources, "download", fake_download)
    with pytest.raises(UserError, match="refused to extract member '../../evil'"):
        cifar100(root=str(tmp_path / "nowhere"), download=True)
    assert not (tmp_path / "xdg-cache" / "evil").exists() and not (tmp_path / "evil").exists()


def test_failed_download_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dest: Path, md5: str | None = None, timeout: float = 30.0) -> Path:
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "download", offline)
    with pytest.raises(UserError, match="network is unreachable") as info:
        cifar100(root=str(tmp_path / "nowhere"), download=True)
    assert str(tmp_path / "nowhere") in str(info.value) and "cifar-100-python" in str(info.value)


def test_official_md5s() -> None:
    assert CIFAR10.archive_md5 == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR100.archive_md5 == "eb9058c3a382ffc7106e4002c42a8d85", "the md5 published on the CIFAR page"


# ---------------------------------------------------------------------------------------------------------------
# The seed studies' CIFAR-10 configs, on a tiny CIFAR-10 written in the official format

CIFAR_CONFIGS = sorted(
    p
    for folder in ("cifar10", "cifar100")
    for p in (Path(__file__).resolve().parents[2] / "configs" / folder).glob("*.yaml")
    if "visionbench train " in p.read_text()
)


# VGG-16 with its own classifier (138M parameters) takes about a minute on 2 vCPUs, most of it writing and reading
# its 0.5 GB weights files; its counting, freezing and ImageNet loading are tested on their own (test_hub.py, seed 002)
SLOW_CONFIGS = {"vgg16_transfer"}


@pytest.mark.parametrize(
    "config",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_CONFIGS else p for p in CIFAR_CONFIGS],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_cifar_configs_train_their_short_variant(tmp_path: Path, capsys, short_variant, config: Path) -> None:
    import safetensors.torch

    from visionbench.cli.main import main
    from visionbench.config import load_config
    from visionbench.models import create_model

    if config.parent.name == "cifar100":
        make_cifar100(tmp_path / "data" / "cifar-100-python", n=40)
    else:
        make_cifar10(tmp_path / "data", n=4)
    out = tmp_path / "runs"
    tiny = [f"data.root={tmp_path / 'data'}", "data.download=false", "trainer.device=cpu", f"trainer.out_dir={out}"]
    tiny += ["trainer.batch_size=8", "trainer.progress=lines", "trainer.checkpoint_every_minutes=null"]
    cfg = load_config(config)
    short = load_config(config, short_variant(config))
    if short.model.pretrained in ("timm", "imagenet"):  # offline here: the same transfer path from a local file
        source = create_model(short.model.name, 1000, img_size=(32, 32), **short.model.kwargs)
        weights = tmp_path / "imagenet.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
        tiny.append(f"model.pretrained={weights}")
    overrides = short_variant(config) + tiny
    assert main(["train", str(config), *[x for o in overrides for x in ("--set", o)]]) == 0, capsys.readouterr().err
    (summary_path,) = out.glob(f"{config.stem}/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "finished" and 0.0 <= summary["final"]["test/acc1"] <= 1.0
    aug = cfg.data.augment
    if aug.auto_augment:  # the CIFAR-100 study's recipe: RandAugment in the workers, the rest batched on the device
        assert "auto_augment" in summary["augment"]["workers"], summary["augment"]
        assert {"mixup_alpha", "cutmix_alpha", "random_erasing"} <= set(summary["augment"]["device"])
    if cfg.model.max_params is not None:
        assert summary["params"] <= cfg.model.max_params
