"""Generated stops of a training run, each told in one line with nothing half-written: a write fault (a full disk,
a quota, a read-only or failing file system, no permission) at any of the run's files, in any phase of the atomic
write; the run directory deleted or moved at any step; SIGINT or SIGTERM at any step, then a resume that finishes.

The faults are injected at the system-call boundary of `visionbench.utils.io` (creating the temp file, writing
it, fsync, rename), so what the caller sees is what the kernel's error would give, torch.save's chained RuntimeError
included. tests/reliability/test_fault_injection.py has the same stops on a real full tmpfs and a real read-only
mount where this machine allows mounting.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from fuzzing import FUZZ, SMOKE, TRIED, after_step, check_minimums, expect_one_line_error, scratch, sets
from hypothesis import given, settings
from hypothesis import strategies as st

import visionbench.utils.io as io_module
from visionbench import layout
from visionbench.cli.main import main

# 2 epochs of 6 steps, a checkpoint every 2 steps: every file of a run is written at least as often as TARGETS says
RUN = ("trainer.epochs=2", "trainer.checkpoint_every_steps=2", "trainer.device=cpu")
MINIMUM = {"write_fault": 20, "run_dir_gone": 10, "stop_signal": 6}


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", str(SMOKE), *sets(*RUN, f"trainer.out_dir={out}", *extra)]


def _runs(out: Path) -> list[Path]:
    return [p.parent for p in out.glob(f"*/*/{layout.CONFIG}")]


def _nothing_half_written(out: Path) -> None:
    assert not list(out.rglob("*.tmp")), "a temp file of an atomic write was left behind"
    for path in out.rglob("*.json"):
        json.loads(path.read_text())  # every JSON file whole
    for path in out.rglob(layout.LAST):
        torch.load(path, weights_only=True)


# --- write faults -------------------------------------------------------------------------------------------------

# (file name, how many times a run of RUN surely writes it)
TARGETS = [
    (layout.CONFIG, 1),
    (layout.ENV, 1),
    (layout.SUMMARY, 3),
    (layout.METRICS, 2),
    ("last", 3),
    ("best.safetensors", 1),
]
ERRNOS = [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES]
PHASES = ["create", "write", "sync", "rename"]


@dataclasses.dataclass
class Fault:
    name: str
    occurrence: int
    errno: int
    phase: str

    def error(self) -> OSError:
        return OSError(self.errno, os.strerror(self.errno))


@st.composite
def write_faults(draw) -> Fault:
    name, most = draw(st.sampled_from(TARGETS))
    return Fault(name, draw(st.integers(1, most)), draw(st.sampled_from(ERRNOS)), draw(st.sampled_from(PHASES)))


class _FaultyWrite:
    """The temp file of the faulted write: its first write fails (phase `write`)."""

    def __init__(self, f, fault: Fault):
        self.f, self.fault = f, fault

    def write(self, data):
        raise self.fault.error()

    def __enter__(self):
        self.f.__enter__()
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.f, name)


class FaultyDisk:
    """Stands in for `os` and `tempfile` inside visionbench.utils.io: the `fault.occurrence`-th atomic write of a
    file named `fault.name` fails with `fault.errno` in `fault.phase`; every other write goes through."""

    def __init__(self, fault: Fault):
        self.fault, self.count, self.fired = fault, 0, False
        self.fd: int | None = None
        self.tmp: str | None = None

    def mkstemp(self, prefix="", suffix="", dir=None):  # noqa: A002  (tempfile's own signature)
        import tempfile

        armed = False
        if prefix == f".{self.fault.name}.":
            self.count += 1
            armed = self.count == self.fault.occurrence
        if armed and self.fault.phase == "create":
            self.fired = True
            raise self.fault.error()
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        if armed:
            self.fd, self.tmp = fd, tmp
        return fd, tmp

    def fdopen(self, fd, mode="r"):
        f = os.fdopen(fd, mode)
        if fd == self.fd and self.fault.phase == "write":
            self.fd, self.fired = None, True  # once: the next file may get the same descriptor number
            return _FaultyWrite(f, self.fault)
        return f

    def fsync(self, fd):
        if fd == self.fd and self.fault.phase == "sync":
            self.fd, self.fired = None, True
            raise self.fault.error()
        os.fsync(fd)

    def replace(self, src, dst):
        if src == self.tmp and self.fault.phase == "rename":
            self.tmp, self.fired = None, True
            raise self.fault.error()
        os.replace(src, dst)

    def __getattr__(self, name):
        return getattr(os, name)


@settings(FUZZ, max_examples=24)
@given(fault=write_faults())
def test_a_write_fault_anywhere_in_a_run_is_one_line_and_leaves_nothing_half_written(work, capsys, fault):
    out = scratch(work)
    disk = FaultyDisk(fault)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io_module, "os", disk)
        mp.setattr(io_module, "tempfile", disk)
        line = expect_one_line_error(capsys, "write_fault", _train(out), needle=f"/{fault.name}: cannot write (")
    assert disk.fired, fault
    assert os.strerror(fault.errno) in line, line
    _nothing_half_written(out)
    runs = _runs(out)
    if fault.name in (layout.CONFIG, layout.ENV) or (fault.name == layout.SUMMARY and fault.occurrence == 1):
        assert not runs and not list(out.glob("*/*")), "a new run that could not write its first files is removed"
    else:
        (run,) = runs
        summary = json.loads((run / layout.SUMMARY).read_text())
        assert summary["status"] == "failed" and summary["error"] == line.removeprefix("error: "), summary


# --- the run directory taken away ---------------------------------------------------------------------------------


@st.composite
def takeaways(draw) -> tuple[int, str, int]:
    """(step, how, level): after optimizer step `step`, the folder `level` above the run directory (0: the run
    directory itself) is deleted or moved."""
    return draw(st.integers(1, 11)), draw(st.sampled_from(["delete", "move"])), draw(st.integers(0, 2))


@settings(FUZZ, max_examples=12)
@given(takeaway=takeaways())
def test_a_run_directory_deleted_or_moved_mid_run_stops_it_and_is_never_recreated(work, capsys, takeaway):
    step, how, level = takeaway
    out = scratch(work) / "runs"
    gone: list[Path] = []

    def take_away(run: Path) -> None:
        folder = [run, run.parent, run.parent.parent][level]
        gone.append(run)
        if how == "delete":
            shutil.rmtree(folder)
        else:
            folder.rename(folder.with_name(folder.name + ".moved"))

    with pytest.MonkeyPatch.context() as mp:
        after_step(mp, step, take_away)
        line = expect_one_line_error(capsys, "run_dir_gone", _train(out), needle="was deleted or moved")
    (run,) = gone
    assert str(run) in line, line
    assert not run.exists(), "the run directory was re-created"
    if how == "move":
        _nothing_half_written(out.parent)


# --- stop signals -------------------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=8)
@given(step=st.integers(1, 11), signum=st.sampled_from([signal.SIGINT, signal.SIGTERM]))
def test_a_stop_signal_at_any_step_ends_in_one_line_and_the_run_resumes(work, capsys, step, signum):
    out = scratch(work)
    with pytest.MonkeyPatch.context() as mp:
        after_step(mp, step, lambda run: os.kill(os.getpid(), signum))
        code = main(_train(out))
    err = capsys.readouterr().err
    assert code == 128 + signum and len(err.splitlines()) == 1 and "Traceback" not in err, err
    (run,) = _runs(out)
    name = signal.Signals(signum).name
    assert err.startswith(f"interrupted by {name} ") and err.strip().endswith(f"visionbench train --resume {run}")
    assert "checkpoint written" in err, "the signal is acted on at the next step, where a checkpoint is consistent"
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "interrupted"
    ckpt = torch.load(run / layout.LAST, weights_only=True)
    assert ckpt["train_state"]["step"] == step, "stopped right after the step the signal came in"
    _nothing_half_written(out)
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / layout.SUMMARY).read_text())["status"] == "finished"
    capsys.readouterr()
    TRIED["stop_signal"] += 1


def test_each_category_reached_its_minimum():
    check_minimums(MINIMUM)
