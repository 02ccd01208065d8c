"""Fault injection: SIGKILL `visionbench train`, `compare` or `search` at random moments, resume, and require the
uninterrupted result.

A reference run trains a small deterministic CPU config to the end (`compare`: a matrix of 2 cells; `search`: a grid
of 2 trials). Then, `--kills` times, a fresh run is killed either after a random delay (anywhere from start-up to
the end) or inside its N-th atomic file write, after the data is in the temp file and before the rename
(`VISIONBENCH_FAULT_KILL_WRITE=N`: checkpoints, metrics.csv, summary.json, best weights, reports, the search's
files). It is resumed until it finishes: `train --resume auto` (from scratch when the kill came before the first
checkpoint), the same `compare` command (finished cells are skipped, an interrupted one resumes), `search --resume`
(the dead trial is failed by its stale heartbeat and retried in its run directory). Every run directory's
metrics.csv (without the clock columns), final metrics and weights must be bit-identical to the reference's.
Prints kills survived out of kills landed.

    python benchmarks/fault_injection.py [--command train|compare|search] [--kills 20] [--seed 0]
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

from visionbench import layout

CLOCKS = ("elapsed_seconds", layout.WALL_TIME)  # metrics.csv columns that differ between identical runs

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


MATRIX = {"trainer.seed": [0, 1]}  # compare's cells
SPACE = {"sampler": "grid", "heartbeat_seconds": 1, "grace_seconds": 4, "params": {"trainer.seed": {"choice": [0, 1]}}}


def _write_inputs(work: Path, command: str) -> list[str]:
    """The input files of `command`; returns its arguments after the subcommand."""
    config = work / "faults.yaml"
    raw = {**CONFIG, "matrix": MATRIX} if command == "compare" else CONFIG
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    if command != "search":
        return [str(config)]
    space = work / "faults.space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return [str(config), "--space", str(space), "--study-name", "grid"]


def _launch(command: str, args: list[str], out: Path, resume: bool, env=None, kill_after: float | None = None):
    cmd = [sys.executable, "-m", "visionbench", command, *args, "--set", f"trainer.out_dir={out}"]
    if resume and command != "compare":  # compare resumes by running again
        cmd += ["--resume", "auto"] if command == "train" else ["--resume"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a search's workers are killed with it
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    return proc.returncode, err


def _finished(out: Path, command: str, expected: int) -> dict[str, Path] | None:
    """The finished run directories by key (train: one; compare: by cell folder; search: by the trial's seed),
    when all `expected` are there."""
    runs: dict[str, Path] = {}
    for summary in (out / "faults").rglob(layout.SUMMARY):
        if '"status": "finished"' not in summary.read_text():
            continue
        run = summary.parent
        if command == "search":
            key = f"seed={yaml.safe_load((run / 'config.yaml').read_text())['trainer']['seed']}"
        else:
            key = "run" if command == "train" else run.name
        runs[key] = run
    return runs if len(runs) == expected else None


def _result(run: Path) -> tuple[list[dict], dict[str, bytes]]:
    """metrics.csv rows without the clock columns, and the raw tensors of the last checkpoint's model and best
    weights."""
    import safetensors.torch
    import torch

    with (run / layout.METRICS).open() as f:
        rows = [{k: v for k, v in row.items() if k not in CLOCKS} for row in csv.DictReader(f)]
    last = torch.load(run / "checkpoints" / "last", map_location="cpu", weights_only=True)
    tensors = {f"last.{k}": v.numpy().tobytes() for k, v in last["model"].items()}
    best = safetensors.torch.load_file(str(run / layout.BEST))
    tensors.update({f"best.{k}": v.numpy().tobytes() for k, v in best.items()})
    return rows, tensors


def _results(runs: dict[str, Path]) -> dict[str, tuple[list[dict], dict[str, bytes]]]:
    return {key: _result(run) for key, run in sorted(runs.items())}


def run_kills(kills: int, seed: int, work: Path, log=print, command: str = "train") -> dict[str, int]:
    """Returns counts: landed (kills that hit a running process), survived (identical after resuming), and
    in_write (landed kills made inside a file write)."""
    args = _write_inputs(work, command)
    expected = 1 if command == "train" else 2
    start = time.monotonic()
    code, err = _launch(command, args, work / "reference", resume=False)
    assert code == 0, err
    duration = time.monotonic() - start
    reference = _results(_finished(work / "reference", command, expected))
    rng = random.Random(seed)
    counts = {"landed": 0, "survived": 0, "in_write": 0, "resumes": 0}
    attempt = 0
    while counts["landed"] < kills:
        attempt += 1
        out = work / f"kill-{attempt:03d}"
        # half the kills land inside a write, half after a delay (whichever kind still lacks landings goes next)
        in_write = counts["in_write"] < kills // 2 and (
            attempt % 2 == 0 or counts["landed"] - counts["in_write"] >= kills - kills // 2
        )
        if in_write:
            n = rng.randint(1, MAX_WRITE)
            code, _ = _launch(command, args, out, resume=False, env={"VISIONBENCH_FAULT_KILL_WRITE": str(n)})
            where = f"in write {n}"
        else:
            delay = rng.uniform(0.5, duration)
            code, _ = _launch(command, args, out, resume=False, kill_after=delay)
            where = f"after {delay:.1f} s"
        if code not in (-signal.SIGKILL, 1) or (code == 1 and command != "search"):
            log(f"kill {where}: the run finished first (not counted)")
            continue
        # a search's worker killed inside a write makes the search exit 1 after waiting for its trial; the others'
        # kills take the whole process group down
        counts["landed"] += 1
        counts["in_write"] += in_write
        for _ in range(5):  # resume until finished; a kill before anything was saved starts over
            code, err = _launch(command, args, out, resume=True)
            counts["resumes"] += 1
            if code == 2 and ("no unfinished run with a checkpoint" in err or "does not exist" in err):
                code, err = _launch(command, args, out, resume=False)
            if code == 0:
                break
        runs = _finished(out, command, expected)
        same = code == 0 and runs is not None and _results(runs) == reference
        counts["survived"] += same
        log(f"kill {counts['landed']:2d} {where}: {'identical' if same else 'DIFFERENT: ' + err.strip()[-300:]}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", choices=["train", "compare", "search"], default="train")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        counts = run_kills(args.kills, args.seed, Path(work), command=args.command)
    print(
        f"{args.command}: kills survived: {counts['survived']} of {counts['landed']} "
        f"({counts['in_write']} inside a file write), "
        f"{counts['resumes']} resumes; bit-identical metrics.csv, last checkpoint and best weights"
    )


if __name__ == "__main__":
    main()
