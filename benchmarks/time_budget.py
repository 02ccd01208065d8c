"""How closely a time-budgeted run ends at its budget.

Run: `python benchmarks/time_budget.py [--minutes 2] [--config configs/fashion_mnist/small_cnn.yaml]`. Trains the
config with `trainer.time_budget_minutes` and a large epoch cap as a fresh `visionbench train` process, then prints
from summary.json the budget, the training seconds counted against it (forward, backward, optimizer steps and the
train loader's batches; evaluation and checkpoint writes are not counted, as documented), the deviation from the
budget in percent, the epochs reached, the final learning rate and the test accuracy, and the process's whole wall
time beside them (which also holds start-up, data loading and evaluation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visionbench import layout

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--config", default="configs/fashion_mnist/small_cnn.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        sets = [f"trainer.time_budget_minutes={args.minutes}", "trainer.epochs=10000", f"trainer.out_dir={out}"]
        cmd = [sys.executable, "-m", "visionbench", "train", args.config, *[x for s in sets for x in ("--set", s)]]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        wall = time.perf_counter() - start
        (summary_path,) = Path(out).glob(f"*/*/{layout.SUMMARY}")
        summary = json.loads(summary_path.read_text())
    budget = summary["time_budget"]
    seconds = args.minutes * 60
    print(f"config: {args.config}")
    print(f"budget: {seconds:.1f} s; counted: {budget['used_seconds']:.3f} s ({budget['ended_by']})")
    print(f"deviation: {100 * (budget['used_seconds'] - seconds) / seconds:+.3f} %")
    print(f"epochs reached: {summary['epochs_completed']}; final lr: {summary['final']['lr']:.3g}")
    print(f"test acc: {100 * summary['final']['test/acc1']:.2f} %")
    print(f"seconds in summary: {summary['seconds']}; process wall time: {wall:.1f} s")


if __name__ == "__main__":
    main()
