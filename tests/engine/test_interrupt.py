"""Stops that tell their story: SIGINT and SIGTERM during `train` end in one line, exit 130/143, status
`interrupted`, a checkpoint at the interruption that `train --resume RUN` continues to the uninterrupted result, and
a terminal restored; other commands end in one line too; the signal machinery (utils/interrupts.py) itself; a worker
dies with its parent. The signals are real (sent to a subprocess, or to this process); every wait is on a file or a
process, with a deadline, never a sleep that hopes."""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from visionbench import layout
from visionbench.cli.main import main
from visionbench.registry import MODELS
from visionbench.utils import interrupts

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "smoke" / "synthetic.yaml"
# 6 epochs of 32 steps: the first checkpoint (step 4) comes long before the end, so the signal lands mid-run
SETS = [
    "trainer.epochs=6",
    "data.kwargs.n_train=1280",
    "trainer.batch_size=32",
    "trainer.checkpoint_every_steps=4",
    "trainer.deterministic=true",
    "trainer.device=cpu",
    # bit-identical needs one thread count in every part (reductions split by threads round differently); this
    # process may hold another test's torch.set_num_threads
    "trainer.num_threads=1",
]
LINE = re.compile(
    r"interrupted by (?P<sig>SIG[A-Z]+) (in epoch \d+/6 at step (?P<step>\d+)|after epoch \d+/6 \(step (?P<at>\d+)\))"
    r", checkpoint written; continue with: visionbench train --resume (?P<run>\S+)"
)


def _args(out: Path, *extra: str) -> list[str]:
    return ["train", str(CONFIG), *(w for s in [*SETS, f"trainer.out_dir={out}", *extra] for w in ("--set", s))]


def _wait(condition, proc: subprocess.Popen, what: str, seconds: float = 180):
    """Poll `condition()` until it is truthy; the process must still run meanwhile."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.02)
    return found


def _first_checkpoint(out: Path):
    return lambda: list(out.glob(f"*/*/{layout.LAST}"))


def _final(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    summary = json.loads((run / layout.SUMMARY).read_text())
    final = {k: v for k, v in summary["final"].items() if k not in ("elapsed_seconds", layout.WALL_TIME)}
    return final, safetensors.torch.load_file(run / layout.BEST)


def _epochs(run: Path) -> list[dict]:
    """metrics.csv's rows without the clock columns."""
    with (run / layout.METRICS).open(newline="") as f:
        return [
            {k: v for k, v in r.items() if k not in ("elapsed_seconds", layout.WALL_TIME)} for r in csv.DictReader(f)
        ]


def _check_interrupted(run: Path, line: str, signum: int) -> int:
    """The one line names the signal, the step and the run; summary.json and the checkpoint agree with it."""
    match = LINE.fullmatch(line)
    assert match, line
    assert match["sig"] == signal.Signals(signum).name and Path(match["run"]) == run, line
    summary = json.loads((run / layout.SUMMARY).read_text())
    assert summary["status"] == "interrupted" and summary["error"] == line, summary
    step = int(match["step"] or match["at"])
    ckpt = torch.load(run / layout.LAST, weights_only=True)
    assert ckpt["train_state"]["step"] == step, "the checkpoint is the one taken at the interruption"
    return step


def test_sigterm_stops_training_in_one_line_with_a_checkpoint_that_resumes_to_the_uninterrupted_result(
    tmp_path, capsys
):
    assert main(_args(tmp_path / "ref", "trainer.checkpoint_every_steps=null")) == 0  # cadence: no effect on results
    (ref,) = [p.parent for p in (tmp_path / "ref").glob(f"*/*/{layout.CONFIG}")]
    capsys.readouterr()

    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionbench", *_args(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait(_first_checkpoint(out), proc, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    (run,) = [p.parent for p in out.glob(f"*/*/{layout.CONFIG}")]
    step = _check_interrupted(run, lines[0], signal.SIGTERM)
    assert step < 6 * 32, "stopped before the end"

    # no CONFIG: the run's own config.yaml; a setting that does not change what the run measures may differ
    assert main(["train", "--resume", str(run), "--set", "trainer.checkpoint_every_steps=null"]) == 0
    assert json.loads((run / layout.SUMMARY).read_text())["status"] == "finished"
    final_a, weights_a = _final(ref)
    final_b, weights_b = _final(run)
    assert final_a == final_b
    assert _epochs(ref) == _epochs(run), "every epoch's row, the interrupted epoch's training metrics included"
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


def test_ctrl_c_on_a_terminal_restores_it_and_ends_in_one_line(tmp_path):
    """SIGINT with the rich bar on a terminal (a pseudo-terminal here): the bar showed the running loss and
    images/s, it is gone after the interrupt, the cursor is shown again, and stderr holds the one line."""
    out = tmp_path / "runs"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionbench", *_args(out, "trainer.progress=auto")],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    screen = bytearray()

    def read_screen() -> None:  # the terminal must be drained, or the run blocks on a full pty
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the other side closed
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        _wait(_first_checkpoint(out), proc, "the first checkpoint")
        _wait(lambda: b"img/s" in screen, proc, "a bar with images/s")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    (run,) = [p.parent for p in out.glob(f"*/*/{layout.CONFIG}")]
    _check_interrupted(run, err.strip(), signal.SIGINT)
    text = bytes(screen)
    assert b"loss " in text and b"img/s" in text, "the bar shows the running loss and the throughput"
    assert text.rfind(b"\x1b[?25h") > text.rfind(b"\x1b[?25l"), "the cursor is shown again"
    assert b"\x1b[?25h" in text[-200:], "the live display was stopped last (nothing drawn after it)"
    tail = text.split(b"\x1b[?25h")[-1]
    assert b"epoch" not in tail.replace(b"\x1b[2K", b""), "no half-drawn bar after the stop"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_any_other_command_interrupted_ends_in_one_line(monkeypatch, capsys, signum):
    """A real signal to this process while `models` runs: one line, 128 + the signal number, no traceback."""
    real = MODELS.list

    def interrupted_list(pattern="*"):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises at once; the sleep is what it interrupts
        return real(pattern)

    monkeypatch.setattr(MODELS, "list", interrupted_list)
    code = main(["models", "--filter", "small*"])
    err = capsys.readouterr().err
    assert code == 128 + signum, err
    assert err.splitlines() == [f"interrupted by {signal.Signals(signum).name}"], err


def test_a_signal_inside_deferred_waits_for_check_and_a_second_one_raises_at_once():
    with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.pending() == signal.SIGTERM, "noted, not raised"
        with pytest.raises(interrupts.Interrupted) as first:
            interrupts.check()
        assert first.value.safe and first.value.exit_code == 143
        assert interrupts.pending() is None
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(interrupts.Interrupted) as second:
            os.kill(os.getpid(), signal.SIGINT)  # a second signal before check(): raised where it lands
            time.sleep(5)
        assert not second.value.safe and second.value.signum == signal.SIGINT
    assert interrupts.pending() is None
    with pytest.raises(interrupts.Interrupted) as at_exit, interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)  # still pending when the block ends normally: raised there
    assert at_exit.value.safe


def test_handlers_are_restored_and_an_ignored_signal_stays_ignored():
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handle_signals():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN, "nohup'd / a worker's SIGINT stays ignored"
            assert signal.getsignal(signal.SIGTERM) is interrupts._handler
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_worker_dies_with_its_sigkilled_parent():
    """PR_SET_PDEATHSIG: a process that called `die_with_parent` gets SIGTERM when its parent is SIGKILLed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    child = (
        "import os, time; from visionbench.utils.interrupts import die_with_parent; "
        "die_with_parent(os.getppid()); print('ready', flush=True); time.sleep(300)"
    )
    parent = (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}]); print(c.pid, flush=True); time.sleep(300)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ready"
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(pid):
            assert time.monotonic() < deadline, f"the child {pid} outlived its parent"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def wait_all_dead(pids: list[int], seconds: float = 60) -> list[int]:
    """The pids still alive after waiting up to `seconds` for all of them to end."""
    deadline = time.monotonic() + seconds
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


COMPARE = """\
data:
  name: synthetic
  val_fraction: 0.2
  kwargs: {{num_classes: 4, n_train: {n_train}, n_test: 64, channels: 1, size: 16}}
model: {{name: small_cnn}}
optim: {{name: sgd, lr: 0.05}}
trainer: {{epochs: {epochs}, batch_size: 32, device: cpu, progress: lines, checkpoint_every_minutes: null,
  checkpoint_every_steps: 4, out_dir: {out}}}
matrix:
  trainer.seed: {seeds}
"""


def _sigterm_once_two_workers_checkpointed(command: list[str], runs: Path):
    """Start `visionbench COMMAND` (compare or search with two workers), SIGTERM it once two runs under `runs` have
    their first checkpoint; returns (the ended process, its worker pids, stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionbench", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(lambda: len(list(runs.glob(f"*/{layout.LAST}"))) == 2, proc, "both workers' first checkpoints")
        workers = descendants(proc.pid)
        assert len(workers) >= 2, workers
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, workers, out, err


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes in /proc")
def test_sigterm_to_compare_with_jobs_stops_its_workers_and_says_how_to_continue(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(COMPARE.format(out=tmp_path / "runs", epochs=20, n_train=1280, seeds=[0, 1, 2]))
    cells = tmp_path / "runs" / "study"
    proc, workers, _, err = _sigterm_once_two_workers_checkpointed(["compare", str(config), "--jobs", "2"], cells)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("compare interrupted by SIGTERM: 0 of 3 cells finished, 2 resume from a checkpoint;"), err
    assert f"continue with: visionbench compare {config} --jobs 2" in err, err
    assert not wait_all_dead(workers), "a worker outlived compare"
    for cell in ("trainer.seed=0", "trainer.seed=1"):
        assert json.loads((cells / cell / layout.SUMMARY).read_text())["status"] == "interrupted", cell
    assert not (cells / "trainer.seed=2").exists(), "no cell started after the signal"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes in /proc")
def test_sigterm_to_search_with_workers_stops_its_workers_and_says_how_to_continue(tmp_path):
    base = COMPARE.format(out=tmp_path / "runs", epochs=20, n_train=1280, seeds=[]).split("matrix:")[0]
    (tmp_path / "base.yaml").write_text(base)
    (tmp_path / "grid.yaml").write_text(
        "sampler: grid\nheartbeat_seconds: 1\ngrace_seconds: 3\nparams: {trainer.seed: {choice: [0, 1, 2]}}\n"
    )
    trials = tmp_path / "runs" / "base" / "grid"
    command = ["search", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "grid.yaml"), "--workers", "2"]
    proc, workers, out, err = _sigterm_once_two_workers_checkpointed(command, trials)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(err.splitlines()) == 1, err
    again = f"{tmp_path / 'base.yaml'} --space {tmp_path / 'grid.yaml'} --workers 2 --study-name grid --resume"
    assert err.startswith(f"search interrupted by SIGTERM; continue with: visionbench search {again} ("), err
    assert out.count("stopped by SIGTERM") == 2, out[-2000:]
    assert not wait_all_dead(workers), "a worker outlived search"
    for trial in ("trial-0000", "trial-0001"):
        assert json.loads((trials / trial / layout.SUMMARY).read_text())["status"] == "interrupted", trial


def test_a_signal_during_compare_ends_in_one_line_and_the_same_command_continues(tmp_path, capsys, monkeypatch):
    """Cells one after another, in this process: SIGTERM in the first cell's second step."""
    from visionbench.engine.loop import Trainer

    config = tmp_path / "study.yaml"
    config.write_text(COMPARE.format(out=tmp_path / "runs", epochs=1, n_train=320, seeds=[0, 1]))
    emit = Trainer._emit
    sent = []

    def emit_then_signal(self, event, state):
        emit(self, event, state)
        if event == "after_batch" and state.step == 2 and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))

    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "_emit", emit_then_signal)
        code = main(["compare", str(config), "--set", "optim.lr=0.02"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and len(err.splitlines()) == 1, err
    expected = "compare interrupted by SIGTERM: 0 of 2 cells finished, 1 resume from a checkpoint; continue with: "
    assert err.strip() == f"{expected}visionbench compare {config} --set optim.lr=0.02", err
    assert main(["compare", str(config), "--set", "optim.lr=0.02"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {tmp_path / 'runs' / 'study' / 'trainer.seed=0'}" in out, out
