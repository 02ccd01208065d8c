"""Kill-and-resume parity: a run SIGKILLed at a random moment and resumed ends with the same metrics (every epoch's
metrics.csv row, the resumed epoch's training metrics included) and weights, bit for bit (CPU, deterministic mode),
as an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

from visionbench import layout

CONFIG = "configs/smoke/synthetic.yaml"
SETS = [
    "trainer.epochs=4",
    "trainer.deterministic=true",
    "data.kwargs.n_train=4096",  # 3277 training images: 102 steps per epoch, 408 in all
    "trainer.batch_size=32",
    "trainer.ema_decay=0.9",
    "data.augment.flip=true",
    "data.augment.translate_pixels=2",
    "model.kwargs.drop_rate=0.2",  # dropout draws from the global RNG, so its state must be restored too
]
TOTAL_STEPS = 408
TIME_COLUMNS = ("elapsed_seconds", layout.WALL_TIME)


def _cmd(out: Path, *extra: str, every: int | None = None) -> list[str]:
    args = [sys.executable, "-m", "visionbench", "train", CONFIG]
    cadence = f"trainer.checkpoint_every_steps={'null' if every is None else every}"
    for s in [*SETS, cadence, f"trainer.out_dir={out}"]:
        args += ["--set", s]
    return [*args, *extra]


def _run_dir(out: Path) -> Path:
    (run,) = [p.parent for p in out.glob(f"*/*/{layout.CONFIG}")]
    return run


def _final(run: Path) -> tuple[dict, dict, dict[str, torch.Tensor], dict, list[dict]]:
    summary = json.loads((run / layout.SUMMARY).read_text())
    weights = safetensors.torch.load_file(run / layout.BEST)
    last = torch.load(run / layout.LAST, weights_only=True)["model"]
    rows = [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in (summary["final"], summary["best"])]
    with (run / layout.METRICS).open(newline="") as f:
        epochs = [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]
    return rows[0], rows[1], weights, last, epochs


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path):
    """The moment is drawn in steps, not seconds: the first checkpoint comes at a random step within the first
    third of the run, and the kill lands a random fraction of a step or two after it is seen, so two thirds of the
    run are still ahead whatever the machine's speed (a delay in seconds let a fast run finish first)."""
    draw = random.Random()
    every, jitter = draw.randint(3, TOTAL_STEPS // 3), draw.uniform(0.0, 0.02)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref_out, killed_out = tmp_path / "ref", tmp_path / "killed"
    # the checkpoint cadence does not change the results (the reference saves time without mid-epoch checkpoints)
    subprocess.run(_cmd(ref_out), check=True, env=env, capture_output=True, timeout=300)

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(_cmd(killed_out, every=every), env=env, **quiet)
    deadline = time.monotonic() + 120
    while not list(killed_out.glob(f"*/*/{layout.LAST}")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(jitter)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill (checkpoint every {every} steps)"
    run = _run_dir(killed_out)
    status = json.loads((run / layout.SUMMARY).read_text())["status"]
    resumed = subprocess.run(
        _cmd(killed_out, "--resume", "auto", every=every), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout, f"status before resume was {status!r} (checkpoint every {every} steps)"

    final_a, best_a, weights_a, last_a, epochs_a = _final(_run_dir(ref_out))
    final_b, best_b, weights_b, last_b, epochs_b = _final(run)
    assert final_a == final_b and best_a == best_b
    assert all(r["train/acc1"] for r in epochs_a), "every epoch has its training accuracy"
    assert epochs_a == epochs_b, "every epoch's row, the one resumed mid-epoch included"
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for key in last_a:
        assert torch.equal(last_a[key], last_b[key]), key
