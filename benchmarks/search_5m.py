"""The 5M-parameter study's space searched on Fashion-MNIST on this machine, under a small training budget per trial.

Runs `visionbench search configs/fashion_mnist/search_5m.yaml --space configs/fashion_mnist/search_5m.space.yaml`
as a subprocess (a fresh study in a temporary run folder), then prints: the wall time of the whole search (process
start to exit: data loading, the meta-device checks, every trial's training and evaluation, the report), trials
run, trials pruned by the parameter budget and by the pruner, the best configuration with its validation accuracy,
its accuracy on the test images the trials use (`data.test_subset`) and on the whole test set (`visionbench eval`).

    python benchmarks/search_5m.py [--trials 12] [--minutes-per-trial 1.0] [--subset 3000] [--test-subset 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from visionbench import layout

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/fashion_mnist/search_5m.yaml"
SPACE = ROOT / "configs/fashion_mnist/search_5m.space.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--minutes-per-trial", type=float, default=1.0, help="trainer.time_budget_minutes")
    parser.add_argument("--epochs", type=int, default=4, help="upper bound; the budget usually ends a trial first")
    parser.add_argument("--subset", type=int, default=3000, help="training images (10 %% of them validate)")
    parser.add_argument("--test-subset", type=int, default=1000, help="test images each trial evaluates")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="search5m-"))
    sets = {
        "data.subset": args.subset,
        "data.test_subset": args.test_subset,
        "trainer.time_budget_minutes": args.minutes_per_trial,
        "trainer.epochs": args.epochs,
        "trainer.out_dir": str(out),
        "trainer.progress": "lines",
    }
    cmd = [sys.executable, "-m", "visionbench", "search", str(CONFIG), "--space", str(SPACE)]
    cmd += ["--trials", str(args.trials)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start

    study_dir = out / "search_5m" / "search_5m"
    study = optuna.load_study(study_name="search_5m", storage=f"sqlite:///{study_dir / 'study.db'}")
    states = Counter(
        f"pruned ({t.user_attrs.get('pruned_by')})" if t.state == TrialState.PRUNED else t.state.name.lower()
        for t in study.trials
    )
    best = study.best_trial
    run_dir = Path(best.user_attrs["run_dir"])
    subprocess.run(
        [sys.executable, "-m", "visionbench", "eval", str(run_dir), "--split", "test"],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    full = json.loads((run_dir / "eval-test-none-best.json").read_text())
    summary = json.loads((run_dir / layout.SUMMARY).read_text())
    print(f"search wall time: {wall:.0f} s ({wall / 60:.1f} min), {args.trials} trials asked")
    print("trials: " + ", ".join(f"{n} {k}" for k, n in sorted(states.items())))
    trained = [t for t in study.trials if "run_dir" in t.user_attrs]
    print(
        f"trials trained: {len(trained)}; pruned by the 5M budget before training: "
        f"{states.get('pruned (constraints)', 0)}"
    )
    print(f"best: trial {best.number}, {best.user_attrs['params']:,} params, " + " ".join(best.user_attrs["overrides"]))
    print(
        f"best val/acc1 {best.value:.4f} ({summary['epochs_completed']} epochs, "
        f"{summary['time_budget']['used_seconds']:.0f} s of training)"
    )
    print(f"best test/acc1 on the {args.test_subset} test images of the trials: {summary['final']['test/acc1']:.4f}")
    print(f"best test/acc1 on all {full['images']} test images (best weights): {full['test/acc1']:.4f}")
    print(f"study folder: {study_dir}")


if __name__ == "__main__":
    main()
