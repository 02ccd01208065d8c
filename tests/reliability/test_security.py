"""Security (issue 9, part 4): foreign files never run code, the source never loads unsafely, archives stay inside.

(a) A planted malicious pickle (its loading would create a marker file) is delivered everywhere a file reaches the
    package from outside: a CIFAR batch, `checkpoints/last` on `--resume`, `eval` and `predict`, the best weights,
    `model.pretrained`, `.npy` files of the DeepLense and image-folder readers and of `predict`, and a YAML config
    tag. Each is refused in one line with exit status 2 and the marker never appears; the same bytes given to the
    unsafe loader (`pickle.loads`, `torch.load(weights_only=False)`, `np.load(allow_pickle=True)`,
    `yaml.unsafe_load`) do create it, so the refusals are meaningful.
(b) The source tree (visionbench/ and benchmarks/) is read as Python syntax: every `torch.load` passes
    `weights_only=True`, only utils/safe_pickle.py unpickles, YAML is read with safe loaders only, no `np.load`
    allows pickles, and only `extract_tar` extracts archives. The checker is first run on a snippet holding each
    violation, so it is known to find them.
(c) `extract_tar` (the only archive extraction; the package has no zip extraction): on top of the cases in
    tests/data/test_cifar.py and test_voc.py (`..`, absolute paths, links, devices, fifos, hostile downloads), a
    backslash `..`, a folder already linked outside the target, and a property test over generated member names and
    links: whatever the archive, nothing is ever written outside the target folder.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from visionbench import layout
from visionbench.cli.main import main
from visionbench.data import cifar as cifar_module
from visionbench.data.sources import extract_tar
from visionbench.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke" / "synthetic.yaml"
TINY = "{num_classes: 3, n_train: 48, n_test: 12, channels: 1, size: 16}"


class Payload:
    """Pickles as the call `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def payload(marker: Path, kind: str) -> Payload:
    if kind == "os.system":
        return Payload(os.system, f"touch {marker}")
    return Payload(exec, f"open({str(marker)!r}, 'w').write('pwned')")


PAYLOADS = ["os.system", "builtins.exec"]


def sets(*overrides: str) -> list[str]:
    return [word for item in overrides for word in ("--set", item)]


def refused_in_one_line(capsys, argv: list, marker: Path, needle: str) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    shown = f"argv={argv}\nexit={code}\nstdout={out[-1000:]!r}\nstderr={err[-2000:]!r}"
    assert not marker.exists(), f"the payload ran\n{shown}"
    assert code == 2 and "Traceback" not in out + err, shown
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], shown
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny classification run."""
    out = tmp_path_factory.mktemp("security-run")
    argv = ["train", str(SMOKE), *sets(f"data.kwargs={TINY}", "trainer.epochs=1", "trainer.batch_size=16")]
    assert main([*argv, *sets("trainer.checkpoint_every_minutes=null", f"trainer.out_dir={out}")]) == 0
    (found,) = [p.parent for p in out.glob(f"*/*/{layout.SUMMARY}")]
    return found


@pytest.fixture
def own_run(run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# (a) Planted payloads


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_malicious_cifar_batch_is_refused(tmp_path, capsys, kind, protocol):
    marker, root = tmp_path / "pwned", tmp_path / "cifar"
    rng = np.random.default_rng(0)
    cifar_module.write_cifar_batch(root / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    for name in (*cifar_module.CIFAR10.train_files, cifar_module.CIFAR10.test_file):
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 1]}
        cifar_module.write_cifar_batch(root / name, batch)
    evil = {b"data": payload(marker, kind), b"labels": [0, 1]}
    (root / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=protocol))
    argv = ["train", SMOKE, *sets("data.name=cifar10", "data.kwargs={}", f"data.root={root}", "data.download=false")]
    line = refused_in_one_line(capsys, [*argv, *sets(f"trainer.out_dir={tmp_path / 'runs'}")], marker, "data_batch_3")
    assert "refused to unpickle" in line and kind.split(".")[1] in line, line
    assert not (tmp_path / "runs").exists()


def _torch_payload(marker: Path, kind: str, container: str) -> bytes:
    """A checkpoint-shaped file carrying the payload, in torch.save's zip format or its legacy (pre-1.6) format."""
    buffer = io.BytesIO()
    state = {"format": "visionbench-checkpoint-v1", "model": payload(marker, kind)}
    torch.save(state, buffer, _use_new_zipfile_serialization=container == "zip")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_malicious_checkpoint_is_refused_on_resume_and_the_run_is_untouched(own_run, capsys, kind, container):
    marker = own_run.parent / "pwned"
    (own_run / "checkpoints" / "last").write_bytes(_torch_payload(marker, kind, container))
    before = _digest(own_run)
    refused_in_one_line(capsys, ["train", own_run / layout.CONFIG, "--resume", own_run], marker, layout.LAST)
    assert _digest(own_run) == before


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_malicious_last_checkpoint_is_refused_by_eval_and_predict(own_run, tmp_path, capsys, command, container):
    marker = tmp_path / "pwned"
    (own_run / "checkpoints" / "last").write_bytes(_torch_payload(marker, "os.system", container))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(image)
    argv = [command, own_run, *([image] if command == "predict" else []), "--weights", "last"]
    refused_in_one_line(capsys, argv, marker, layout.LAST)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_pickle_in_place_of_the_best_weights_is_never_unpickled(own_run, tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    (own_run / layout.BEST).write_bytes(_torch_payload(marker, "os.system", "zip"))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(image)
    argv = [command, own_run, *([image] if command == "predict" else [])]
    refused_in_one_line(capsys, argv, marker, "best.safetensors")


@pytest.mark.parametrize("name", ["weights.pt", "weights.safetensors"])
def test_a_malicious_pretrained_file_is_refused(tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    (tmp_path / name).write_bytes(_torch_payload(marker, "builtins.exec", "zip"))
    argv = ["train", SMOKE, *sets(f"model.pretrained={tmp_path / name}", f"trainer.out_dir={tmp_path / 'runs'}")]
    refused_in_one_line(capsys, argv, marker, "model.pretrained")
    assert not (tmp_path / "runs").exists()


def _object_npy(obj) -> bytes:
    array = np.empty(2, dtype=object)
    array[0], array[1] = obj
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("where", ["image", "label"])
def test_a_malicious_deeplense_release_file_is_refused(tmp_path, capsys, kind, where):
    marker, folder = tmp_path / "pwned", tmp_path / "release"
    folder.mkdir()
    good = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    for i in range(4):
        (folder / f"a{i}.npy").write_bytes(_object_npy((good, 1e-23)))
    evil = (payload(marker, kind), 1e-23) if where == "image" else (good, payload(marker, kind))
    (folder / "evil.npy").write_bytes(_object_npy(evil))
    argv = ["train", SMOKE, *sets("data.name=deeplense", f"data.kwargs={{path: {folder}}}")]
    line = refused_in_one_line(capsys, [*argv, *sets(f"trainer.out_dir={tmp_path / 'runs'}")], marker, "evil.npy")
    assert "refused to unpickle" in line, line


def test_a_malicious_simulated_targets_file_is_refused(tmp_path, capsys):
    marker, folder = tmp_path / "pwned", tmp_path / "sim"
    folder.mkdir()
    np.save(folder / "images.npy", np.zeros((4, 1, 16, 16), dtype=np.float32))
    targets = np.empty(4, dtype=object)
    targets[:] = [payload(marker, "os.system")] * 4
    np.save(folder / "targets.npy", targets, allow_pickle=True)
    meta = {"format": "visionbench-lensing", "version": 1, "n": 4, "variant": "regression", "complete": True}
    (folder / "meta.json").write_text(json.dumps(meta))
    argv = ["train", SMOKE, *sets("data.name=deeplense", f"data.kwargs={{path: {folder}}}")]
    refused_in_one_line(capsys, [*argv, *sets(f"trainer.out_dir={tmp_path / 'runs'}")], marker, "sim")


def test_a_malicious_npy_in_an_image_folder_is_refused(tmp_path, capsys):
    marker, root = tmp_path / "pwned", tmp_path / "images"
    for i, name in enumerate(("cat", "dog")):
        (root / "train" / name).mkdir(parents=True)
        for j in range(3):
            grey = np.full((8, 8, 3), 40 * (3 * i + j), dtype=np.uint8)
            Image.fromarray(grey).save(root / "train" / name / f"{j}.png")
    (root / "train" / "cat" / "evil.npy").write_bytes(_object_npy((payload(marker, "os.system"), 0)))
    argv = ["train", SMOKE, *sets("data.name=image_folder", "data.kwargs={test_fraction: 0.25}", f"data.root={root}")]
    argv += sets("data.image_size=16", "data.val_fraction=0", "data.num_workers=0", "trainer.batch_size=64")
    refused_in_one_line(capsys, [*argv, *sets(f"trainer.out_dir={tmp_path / 'runs'}")], marker, "evil.npy")


def test_a_malicious_npy_given_to_predict_is_refused(own_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.npy").write_bytes(_object_npy((payload(marker, "os.system"), 0)))
    refused_in_one_line(capsys, ["predict", own_run, tmp_path / "evil.npy"], marker, "evil.npy")


def _yaml_payload(marker: Path) -> str:
    return SMOKE.read_text() + f"extra: !!python/object/apply:os.system ['touch {marker}']\n"


def test_a_yaml_tag_that_calls_a_function_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.yaml").write_text(_yaml_payload(marker))
    refused_in_one_line(capsys, ["train", tmp_path / "evil.yaml"], marker, "not valid YAML")
    override = f"optim.lr=!!python/object/apply:os.system ['touch {marker}']"
    refused_in_one_line(capsys, ["train", SMOKE, "--set", override], marker, "optim.lr")


def test_the_planted_payloads_do_run_under_the_unsafe_loaders(tmp_path):
    """The refusals above mean something: each planted file runs its payload when loaded the unsafe way."""
    unsafe = {
        "pickle": lambda m: pickle.loads(pickle.dumps({b"data": payload(m, "os.system")}, protocol=2)),
        "exec": lambda m: pickle.loads(pickle.dumps(payload(m, "builtins.exec"), protocol=0)),
        "torch zip": lambda m: torch.load(io.BytesIO(_torch_payload(m, "os.system", "zip")), weights_only=False),
        "torch legacy": lambda m: torch.load(io.BytesIO(_torch_payload(m, "os.system", "legacy")), weights_only=False),
        "npy": lambda m: np.load(io.BytesIO(_object_npy((payload(m, "os.system"), 0))), allow_pickle=True),
        "yaml": lambda m: yaml.unsafe_load(_yaml_payload(m)),
    }
    for name, load in unsafe.items():
        marker = tmp_path / f"ran-{name.replace(' ', '-')}"
        load(marker)
        assert marker.exists(), f"the {name} payload is not a real payload"


# ---------------------------------------------------------------------------------------------------------------
# (b) The source never loads unsafely


SAFE_YAML_LOADERS = (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))
EXTRACT_TAR_HOME = "visionbench/data/sources.py"  # the one module that may extract archives
UNSAFE_YAML = {"unsafe_load", "full_load", "unsafe_load_all", "full_load_all", "Loader", "UnsafeLoader", "FullLoader"}
UNSAFE_YAML |= {"CLoader", "CUnsafeLoader", "CFullLoader"}


def _module_of(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`np.load` -> "numpy" (through `import numpy as np`), `torch.load` -> "torch", else None."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return aliases.get(node.value.id)
    return None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str, path: str, namespace: dict | None = None) -> list[str]:
    """Every unsafe load in `source`, as "path:line: what"; `namespace` resolves a `yaml.load` Loader by name."""
    tree = ast.parse(source)
    aliases = {}
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "torch", "numpy", "yaml"):
            for a in node.names:
                if "load" in a.name.lower() or (node.module == "yaml" and a.name in UNSAFE_YAML):
                    problems.append(f"{path}:{node.lineno}: from {node.module} import {a.name}")
    safe_pickle = path.replace(os.sep, "/").endswith("visionbench/utils/safe_pickle.py")
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and _module_of(node, aliases) == "yaml" and node.attr in UNSAFE_YAML:
            problems.append(f"{where}: yaml.{node.attr}")
        if isinstance(node, ast.ClassDef) and not safe_pickle:
            if any(_module_of(b, aliases) == "pickle" and getattr(b, "attr", "") == "Unpickler" for b in node.bases):
                problems.append(f"{where}: a subclass of pickle.Unpickler outside utils/safe_pickle.py")
        if not isinstance(node, ast.Call):
            continue
        module, attr = _module_of(node.func, aliases), getattr(node.func, "attr", None)
        if module in ("pickle", "_pickle", "dill", "cloudpickle", "joblib") and attr in ("load", "loads", "Unpickler"):
            if not safe_pickle or attr != "Unpickler":
                problems.append(f"{where}: {module}.{attr} outside utils/safe_pickle.py")
        elif module == "torch" and attr == "load" and not _is_constant(_keyword(node, "weights_only"), True):
            problems.append(f"{where}: torch.load without weights_only=True")
        elif module == "numpy" and attr == "load":
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not _is_constant(allow, False):
                problems.append(f"{where}: np.load with allow_pickle other than False")
        elif module == "yaml" and attr in ("load", "load_all"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            resolved = (namespace or {}).get(loader.id) if isinstance(loader, ast.Name) else None
            if not (isinstance(resolved, type) and issubclass(resolved, SAFE_YAML_LOADERS)):
                problems.append(f"{where}: yaml.{attr} without a SafeLoader")
        elif attr in ("extractall", "extract") and not path.replace(os.sep, "/").endswith(EXTRACT_TAR_HOME):
            problems.append(f"{where}: .{attr}( outside {EXTRACT_TAR_HOME}'s extract_tar")
    return problems


def test_the_checker_finds_every_kind_of_unsafe_load():
    snippet = """
import pickle, torch, yaml
import numpy as np
from pickle import loads
pickle.load(f); pickle.loads(b); pickle.Unpickler(f)
torch.load(p); torch.load(p, weights_only=False); torch.load(p, weights_only=flag)
np.load(p, allow_pickle=True); np.load(p, allow_pickle=flag)
yaml.load(t); yaml.load(t, Loader=yaml.Loader); yaml.unsafe_load(t); yaml.full_load(t); yaml.load(t, Unsafe)
tarfile.open(a).extractall(d)
class Mine(pickle.Unpickler): pass
torch.load(p, weights_only=True); np.load(p); np.load(p, allow_pickle=False); yaml.safe_load(t)
"""
    problems = unsafe_loads(snippet, "visionbench/x.py", {"Unsafe": yaml.UnsafeLoader})
    expected = [
        "from pickle import loads",
        "pickle.load outside",
        "pickle.loads outside",
        "pickle.Unpickler outside",
        "torch.load without",
        "np.load with",
        "yaml.load without",
        "yaml.Loader",
        "yaml.unsafe_load",
        "yaml.full_load",
        ".extractall(",
        "subclass of pickle.Unpickler",
    ]
    for what in expected:
        assert any(what in p for p in problems), f"the checker missed {what!r}: {problems}"
    assert sum("torch.load without" in p for p in problems) == 3 and sum("np.load with" in p for p in problems) == 2
    assert sum("yaml.load without" in p for p in problems) == 3, problems  # no Loader, yaml.Loader, UnsafeLoader
    assert not [p for p in problems if p.startswith("visionbench/x.py:11:")], "the safe calls (line 11) are safe"


def test_the_source_tree_never_loads_unsafely():
    import importlib

    files = sorted([*(ROOT / "visionbench").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])
    assert len(files) > 50, "the checker must see the package"
    problems = []
    for path in files:
        source = path.read_text()
        namespace = None
        if "yaml.load" in source and path.is_relative_to(ROOT / "visionbench"):  # resolve the Loader it passes
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            namespace = vars(importlib.import_module(module))
        problems += unsafe_loads(source, str(path.relative_to(ROOT)), namespace)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------------
# (c) Archive extraction stays inside its folder


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


def _files_outside(top: Path, dest: Path, archive: Path) -> list[Path]:
    return [p for p in top.rglob("*") if p != archive and dest not in (p, *p.parents) and not p.is_dir()]


@pytest.mark.parametrize("name", ["..\\evil", "ok\\..\\..\\evil", "ok/..\\..\\evil"])
def test_extract_tar_refuses_a_backslash_dotdot(tmp_path, name):
    archive = _tar(tmp_path / "a.tar", [_member("ok/file"), _member(name)])
    dest = tmp_path / "out" / "dest"
    with pytest.raises(UserError, match="path contains '..'"):
        extract_tar(archive, dest)
    assert _files_outside(tmp_path, dest, archive) == [] and not (dest / "ok" / "file").exists()


def test_extract_tar_refuses_a_member_under_a_folder_already_linked_outside(tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir()
    dest.mkdir()
    (dest / "escape").symlink_to(outside)  # left by someone else: the archive itself holds no link
    archive = _tar(tmp_path / "a.tar", [_member("escape/evil")])
    with pytest.raises(UserError, match="would land outside"):
        extract_tar(archive, dest)
    assert list(outside.iterdir()) == []


SEGMENT = st.sampled_from(["..", ".", "a", "b", "", "\\..", "..\\", "~", "a b"])
MEMBER = st.tuples(
    st.lists(SEGMENT, min_size=1, max_size=4).map("/".join),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]),
    st.sampled_from(["", "..", "../outside", "/", "a", "a/../..", "/tmp"]),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(members=st.lists(MEMBER, min_size=1, max_size=4), absolute=st.booleans())
def test_extract_tar_never_writes_outside_its_folder(tmp_path_factory, members, absolute):
    top = tmp_path_factory.mktemp("tar")
    dest = top / "x" / "dest"
    infos = [_member(name, kind, link) for name, kind, link in members]
    if absolute:
        infos.append(_member(str(top / "outside-abs")))
    archive = _tar(top / "a.tar", infos)
    try:
        extract_tar(archive, dest)
    except UserError as exc:
        assert "\n" not in str(exc) and str(archive) in str(exc), str(exc)
        assert not dest.exists() or not any(dest.iterdir()), "a refused archive writes nothing"
    else:
        for path in dest.rglob("*"):
            assert not path.is_symlink() and (path.is_file() or path.is_dir()), path
    assert _files_outside(top, dest, archive) == []
