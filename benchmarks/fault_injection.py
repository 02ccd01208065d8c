"""Fault injection: SIGKILL `visionbench train` at random moments, resume, and require the uninterrupted result.

A reference run trains a small deterministic CPU config to the end. Then, `--kills` times, a fresh run is killed
either after a random delay (anywhere from start-up to the end of training) or inside its N-th atomic file write,
after the data is in the temp file and before the rename (`VISIONBENCH_FAULT_KILL_WRITE=N`: checkpoints, metrics.csv,
summary.json, best weights). It is resumed with `--resume auto` until it finishes (from scratch when the kill came
before the first checkpoint), and its metrics.csv (without the wall-clock column), final metrics and weights must be
bit-identical to the reference's. Prints kills survived out of kills landed.

    python benchmarks/fault_injection.py [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "data": {"name": "synthetic", "val_fraction": 0.2, "kwargs": {"num_classes": 4, "n_train": 2048, "n_test": 256,
                                                                  "channels": 1, "size": 16}},
    "model": {"name": "small_cnn"},
    "optim": {"lr": 0.05},
    "trainer": {"epochs": 3, "batch_size": 64, "deterministic": True, "num_threads": 1, "progress": "lines",
                "checkpoint_every_steps": 3, "checkpoint_every_minutes": None, "experiment": "faults"},
}  # fmt: skip
MAX_WRITE = 60  # in-write kills pick N in 1..MAX_WRITE (about the writes of one run of this config)


def _train(config: Path, out: Path, resume: bool, env: dict[str, str] | None = None, kill_after: float | None = None):
    cmd = [sys.executable, "-m", "visionbench", "train", str(config), "--set", f"trainer.out_dir={out}"]
    cmd += ["--resume", "auto"] if resume else []
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    return proc.returncode, err


def _finished(out: Path) -> Path | None:
    for summary in (out / "faults").glob("*/summary.json"):
        if '"status": "finished"' in summary.read_text():
            return summary.parent
    return None


def _result(run: Path) -> tuple[list[dict], dict[str, bytes]]:
    """metrics.csv rows without elapsed_seconds, and the raw tensors of the last checkpoint's model and best weights."""
    import safetensors.torch
    import torch

    with (run / "metrics.csv").open() as f:
        rows = [{k: v for k, v in row.items() if k != "elapsed_seconds"} for row in csv.DictReader(f)]
    last = torch.load(run / "checkpoints" / "last", map_location="cpu", weights_only=True)
    tensors = {f"last.{k}": v.numpy().tobytes() for k, v in last["model"].items()}
    best = safetensors.torch.load_file(str(run / "checkpoints" / "best.safetensors"))
    tensors.update({f"best.{k}": v.numpy().tobytes() for k, v in best.items()})
    return rows, tensors


def run_kills(kills: int, seed: int, work: Path, log=print) -> dict[str, int]:
    """Returns counts: landed (kills that hit a running process), survived (identical after resuming), and
    in_write (landed kills made inside a file write)."""
    config = work / "faults.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    start = time.monotonic()
    code, err = _train(config, work / "reference", resume=False)
    assert code == 0, err
    duration = time.monotonic() - start
    reference = _result(_finished(work / "reference"))
    rng = random.Random(seed)
    counts = {"landed": 0, "survived": 0, "in_write": 0, "resumes": 0}
    attempt = 0
    while counts["landed"] < kills:
        attempt += 1
        out = work / f"kill-{attempt:03d}"
        in_write = attempt % 2 == 0
        if in_write:
            n = rng.randint(1, MAX_WRITE)
            code, _ = _train(config, out, resume=False, env={"VISIONBENCH_FAULT_KILL_WRITE": str(n)})
            where = f"in write {n}"
        else:
            delay = rng.uniform(0.5, duration)
            code, _ = _train(config, out, resume=False, kill_after=delay)
            where = f"after {delay:.1f} s"
        if code != -signal.SIGKILL:
            log(f"kill {where}: the run finished first (not counted)")
            continue
        counts["landed"] += 1
        counts["in_write"] += in_write
        for _ in range(5):  # resume until finished; a kill before the first checkpoint starts over
            code, err = _train(config, out, resume=True)
            counts["resumes"] += 1
            if code == 2 and "no unfinished run with a checkpoint" in err:
                code, err = _train(config, out, resume=False)
            if code == 0:
                break
        run = _finished(out)
        same = code == 0 and run is not None and _result(run) == reference
        counts["survived"] += same
        log(f"kill {counts['landed']:2d} {where}: {'identical' if same else 'DIFFERENT: ' + err.strip()[-300:]}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        counts = run_kills(args.kills, args.seed, Path(work))
    print(
        f"kills survived: {counts['survived']} of {counts['landed']} ({counts['in_write']} inside a file write), "
        f"{counts['resumes']} resumes; bit-identical metrics.csv, last checkpoint and best weights"
    )


if __name__ == "__main__":
    main()
