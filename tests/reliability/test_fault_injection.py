"""SIGKILL `visionbench train`, `compare` or `search` (after a random delay, or inside a file write), resume, and
require the result of the uninterrupted run bit for bit (benchmarks/fault_injection.py; its 20-kill figures are in
benchmarks/RESULTS.md). `make test` runs two kills of `train`; compare's and search's single kills are covered by
their own suites (tests/engine/test_compare.py, tests/search/test_search.py), their 20 kills here under -m slow."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fuzzing import after_step

from visionbench import layout
from visionbench.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _harness():
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "benchmarks" / "fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    counts = _harness().run_kills(2, seed=1, work=tmp_path)  # one timed kill, one inside a file write
    assert counts["landed"] == 2 and counts["in_write"] == 1
    assert counts["survived"] == 2, counts


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "compare", "search"])
def test_twenty_kills(tmp_path, command):
    counts = _harness().run_kills(20, seed=0, work=tmp_path, command=command)
    assert counts["survived"] == counts["landed"] == 20, counts


# --- file-system faults and a run directory taken away mid-run: one line each, nothing half-written -----------------

SMOKE = ROOT / "configs" / "smoke" / "synthetic.yaml"


def _train(out: Path, *overrides: str) -> list[str]:
    return ["train", str(SMOKE), *(w for s in [f"trainer.out_dir={out}", *overrides] for w in ("--set", s))]


def _one_line(capsys, code: int, needle: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (code, err)
    assert needle in err, err
    return err.strip()


def _no_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*.tmp")], "a temp file of an atomic write was left behind"


def test_a_run_directory_deleted_mid_run_stops_the_run_and_is_not_recreated(tmp_path, capsys, monkeypatch):
    seen = []
    after_step(monkeypatch, 2, lambda run: (seen.append(run), shutil.rmtree(run)))
    code = main(_train(tmp_path, "trainer.checkpoint_every_steps=3"))
    err = _one_line(capsys, code, "the folder was deleted or moved while it was being written to; stopped")
    (run,) = seen
    assert str(run) in err and "in epoch 1/2 at step 3" in err, err
    assert not run.exists(), "the run directory was re-created"
    assert list(run.parent.iterdir()) == [], "nothing else was written in its place"


def test_checkpoint_replaced_by_a_directory_mid_run_is_one_line(tmp_path, capsys, monkeypatch):
    def replace_last(run: Path) -> None:
        (run / "checkpoints" / "last").unlink()
        (run / "checkpoints" / "last").mkdir()

    after_step(monkeypatch, 3, replace_last)
    code = main(_train(tmp_path, "trainer.checkpoint_every_steps=2"))
    err = _one_line(capsys, code, "checkpoints/last: cannot write (Is a directory)")
    assert "the run stopped in epoch 1/2 at step 4; checkpoints/last is no longer a file" in err, err
    (run,) = [p.parent for p in tmp_path.glob(f"*/*/{layout.CONFIG}")]
    _no_temp_files(run)
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "failed" and summary["error"] == err.removeprefix("error: ")


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A small tmpfs at `path` (root only; skipped where mounting is not allowed)."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_leaves_no_partial_file(tmp_path, capsys):
    """A real full disk: a 48 KiB tmpfs takes the run's small files but not its 65 KB checkpoint."""
    with _tmpfs(tmp_path / "disk", "48k") as disk:
        code = main(_train(disk / "runs", "trainer.checkpoint_every_steps=2"))
        err = _one_line(capsys, code, "checkpoints/last: cannot write (No space left on device); nothing was written")
        assert "the run stopped in epoch 1/2 at step 2; no checkpoint was written" in err, err
        (run,) = [p.parent for p in disk.glob("runs/*/*/config.yaml")]
        _no_temp_files(disk)
        assert not (run / "checkpoints" / "last").exists()
        assert json.loads((run / layout.SUMMARY).read_text())["status"] == "failed"


def test_resume_on_a_read_only_file_system_is_one_line_and_changes_nothing(tmp_path, capsys):
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        assert main(_train(disk / "runs", "trainer.epochs=1")) == 0
        (run,) = [p.parent for p in disk.glob("runs/*/*/config.yaml")]
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        capsys.readouterr()
        err = _one_line(capsys, main(["train", "--resume", str(run)]), "cannot write (Read-only file system)")
        assert str(run) in err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
