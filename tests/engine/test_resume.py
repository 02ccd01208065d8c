"""Kill-and-resume parity: a run SIGKILLed at a random moment and resumed ends with the same metrics and
weights, bit for bit (CPU, deterministic mode), as an uninterrupted run."""

from __future__ import annotations

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

CONFIG = "configs/smoke/synthetic.yaml"
SETS = [
    "trainer.epochs=4",
    "trainer.deterministic=true",
    "trainer.checkpoint_every_steps=3",
    "data.kwargs.n_train=4096",
    "trainer.batch_size=32",
    "trainer.ema_decay=0.9",
    "data.augment.flip=true",
    "data.augment.translate_pixels=2",
    "model.kwargs.drop_rate=0.2",  # dropout draws from the global RNG, so its state must be restored too
]


def _cmd(out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "visionbench", "train", CONFIG]
    for s in [*SETS, f"trainer.out_dir={out}"]:
        args += ["--set", s]
    return [*args, *extra]


def _run_dir(out: Path) -> Path:
    (run,) = [p.parent for p in out.glob("*/*/config.yaml")]
    return run


def _final(run: Path) -> tuple[dict, dict, dict[str, torch.Tensor], dict]:
    summary = json.loads((run / "summary.json").read_text())
    weights = safetensors.torch.load_file(run / "checkpoints/best.safetensors")
    last = torch.load(run / "checkpoints/last", weights_only=True)["model"]
    rows = [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in (summary["final"], summary["best"])]
    return rows[0], rows[1], weights, last


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref_out, killed_out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(ref_out), check=True, env=env, capture_output=True, timeout=300)

    proc = subprocess.Popen(_cmd(killed_out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed_out.glob("*/*/checkpoints/last")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # The run takes several seconds past its first checkpoint; a kill within the next second lands mid-training,
    # between checkpoints or during one (each write is atomic).
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill: make it longer"
    run = _run_dir(killed_out)
    status = json.loads((run / "summary.json").read_text())["status"]
    resumed = subprocess.run(_cmd(killed_out, "--resume", "auto"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout, f"status before resume was {status!r}"

    final_a, best_a, weights_a, last_a = _final(_run_dir(ref_out))
    final_b, best_b, weights_b, last_b = _final(run)
    assert final_a == final_b and best_a == best_b
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    for key in last_a:
        assert torch.equal(last_a[key], last_b[key]), key
