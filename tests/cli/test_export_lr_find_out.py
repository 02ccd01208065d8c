"""Where `export` and `lr-find` may write: an opset the exporter cannot honour is refused (never a silent opset
18), no file is written over unless `--overwrite` asks, nothing is written inside another command's run directory,
and a failed write leaves nothing behind. A 1-epoch small_cnn on synthetic data; CPU, no network."""

from __future__ import annotations

import errno
import hashlib
import tempfile
from pathlib import Path

import pytest
from cli_checks import refused as _refused

from visionbench import layout
from visionbench.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke" / "synthetic.yaml"
TINY = "data.kwargs={num_classes: 3, n_train: 48, n_test: 12, channels: 1, size: 16}"


def _sets(*overrides: str) -> list[str]:
    return [word for item in overrides for word in ("--set", item)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "runs"
    argv = ["train", str(SMOKE), *_sets(TINY, "trainer.epochs=1", "trainer.batch_size=16", f"trainer.out_dir={out}")]
    assert main(argv) == 0
    (summary,) = out.glob(f"*/*/{layout.SUMMARY}")
    return summary.parent


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


# ---------------------------------------------------------------------------------------------------------------
# export --opset


@pytest.mark.parametrize("opset", [0, 1, 6, 29, 99])
def test_an_opset_outside_what_onnx_knows_is_refused_before_exporting(run, tmp_path, capsys, opset):
    pytest.importorskip("onnxscript", reason="ONNX export needs pip install 'visionbench[export]'")
    out = tmp_path / "m.onnx"
    err = _refused(capsys, ["export", run, "--format", "onnx", "--opset", opset, "--out", out], f"--opset {opset}: ")
    assert "expected an ONNX opset from 7 to" in err and not out.exists(), err


def test_an_opset_the_converter_cannot_reach_is_refused_and_one_it_can_is_written(run, tmp_path, capsys):
    """small_cnn converts down to opset 15 (onnx has no adapter below it for Reshape/Shape) and up to onnx's last."""
    onnx = pytest.importorskip("onnx", reason="ONNX export needs pip install 'visionbench[export]'")
    pytest.importorskip("onnxscript", reason="ONNX export needs pip install 'visionbench[export]'")
    low = tmp_path / "m12.onnx"
    err = _refused(capsys, ["export", run, "--format", "onnx", "--opset", 12, "--out", low], "--opset 12: small_cnn")
    assert "cannot be converted from opset 18" in err and "weights_only" not in err and not low.exists(), err
    for opset in (15, onnx.defs.onnx_opset_version()):
        path = tmp_path / f"m{opset}.onnx"
        assert main(["export", str(run), "--format", "onnx", "--opset", str(opset), "--out", str(path)]) == 0
        written = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
        assert written.get("", written.get("ai.onnx")) == opset, written
        assert f"{path}: ONNX opset {opset}," in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# export --out


def test_export_never_writes_over_a_file_it_did_not_create_unless_asked(run, tmp_path, capsys):
    pytest.importorskip("onnxscript", reason="ONNX export needs pip install 'visionbench[export]'")
    before = _digest(run)
    argv = ["export", run, "--format", "onnx"]
    _refused(capsys, [*argv, "--out", run / layout.BEST], "exists; pass --overwrite")
    _refused(capsys, [*argv, "--out", run / layout.BEST, "--overwrite"], "inside the run")
    _refused(capsys, [*argv, "--out", run / layout.CONFIG, "--overwrite"], "only under its own export/ folder")
    _refused(capsys, [*argv, "--out", run / "new.onnx"], f"inside the run directory {run.resolve()}")
    _refused(capsys, [*argv, "--out", tmp_path], "is a folder; expected a file path")
    assert _digest(run) == before, "the run directory is unchanged"

    mine = tmp_path / "mine.txt"
    mine.write_text("keep me")
    _refused(capsys, [*argv, "--out", mine], f"--out {mine}: exists; pass --overwrite to replace it")
    assert mine.read_text() == "keep me"
    assert main([*map(str, argv), "--out", str(mine), "--overwrite"]) == 0
    assert mine.read_bytes()[:2] != b"ke", "replaced by the ONNX model when asked"
    default = run / "export" / "model.onnx"  # export's own file: replaced by the next export
    assert main([*map(str, argv)]) == 0 and main([*map(str, argv)]) == 0 and default.is_file()


def test_a_failed_export_write_is_one_line_and_leaves_nothing(run, tmp_path, capsys, monkeypatch):
    """A read-only file system (simulated: the tests may run as root, whom chmod does not stop)."""
    pytest.importorskip("onnxscript", reason="ONNX export needs pip install 'visionbench[export]'")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target = tmp_path / "ro" / "m.onnx"
    err = _refused(capsys, ["export", run, "--format", "onnx", "--out", target], "cannot write (Read-only file system)")
    assert "nothing written" in err
    assert not any(p.is_file() for p in tmp_path.rglob("*")), list(tmp_path.rglob("*"))


# ---------------------------------------------------------------------------------------------------------------
# lr-find --out


def test_lr_find_refuses_an_out_that_holds_another_commands_files(run, tmp_path, capsys):
    before = _digest(run)
    argv = ["lr-find", SMOKE, *_sets(TINY), "--steps", "10"]
    _refused(capsys, [*argv, "--out", run], "a training run's directory")
    _refused(capsys, [*argv, "--out", run / "sub"], f"inside the run directory {run.resolve()}")
    _refused(capsys, [*argv, "--out", run / layout.CONFIG], "exists and is not a folder")
    assert _digest(run) == before, "lr-find must leave the run as it was"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    _refused(capsys, [*argv, "--out", notes], "not empty and not an lr-find result (holds e.g. 'todo.txt')")


def test_lr_find_replaces_its_own_result_only_with_overwrite(tmp_path, capsys):
    argv = ["lr-find", str(SMOKE), *_sets(TINY), "--steps", "10"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv, "--out", str(empty)]) == 0, "a new or empty folder is fine"
    first = _digest(empty)
    assert set(first) == {"lr_find.csv", layout.LR_FIND_PNG, layout.LR_FIND_JSON, layout.CONFIG}, first
    _refused(capsys, [*argv, "--out", empty], "holds an earlier lr-find result; pass --overwrite")
    assert _digest(empty) == first
    assert main([*argv, "--out", str(empty), "--overwrite", "--start-lr", "1e-5"]) == 0
    assert _digest(empty)[layout.LR_FIND_JSON] != first[layout.LR_FIND_JSON]
