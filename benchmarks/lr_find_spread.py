"""How far `visionbench lr-find`'s suggestions move between seeds: one sweep per seed, each seed's suggestions,
then max/min of every suggestion over the seeds (the target: <= 3 for the main one).

    python benchmarks/lr_find_spread.py [CONFIG] [--seeds 0 1 2 3 4] [--steps N] [--set key=value ...]

The config defaults to configs/fashion_mnist/small_cnn.yaml; the seed is `trainer.seed` (model init, batch order,
dropout). `trainer.num_threads=1` comes first (a `--set` overrides it): on the 2-vCPU development machine, beside
another training process, torch's two threads took 11 min for the five 500-step sweeps, one thread 32 s. Each
sweep runs through `visionbench.engine.lr_find.lr_find`; its files go to a temporary folder. For reference the
table also has fastai's own `valley` rule on the same smoothed curves (`_fastai_valley`, after fastai's
`callback/schedule.py`, Apache-2.0: the longest decreasing run of the smoothed loss, the first tenth of the
requested steps and the last 5 points skipped), the "raw method" that `valley` here replaces.

Measured 2026-11-23 on that machine (torch 2.14.1, one thread, seeds 0-4), max/min over the seeds:
500 steps: valley 1.68, steepest 2.02, min/10 1.56, fastai's valley 1.94; 100 steps: 559, 9.33, 9.33 and 3.68.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from visionbench.config import load_config
from visionbench.engine import lr_find as lf


def _fastai_valley(lrs: list[float], smoothed: list[float], num_it: int) -> float:
    """fastai's `valley`: the longest decreasing subsequence of the smoothed loss, the point 1/2 of the way in."""
    lrs, losses = lrs[num_it // 10 : -5], smoothed[num_it // 10 : -5]
    lds, start, end = [1] * len(losses), 0, 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[end] < lds[i]:
                end, start = i, i - lds[i]
    sections = (end - start) / 3
    return lrs[start + int(sections) + int(sections / 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/fashion_mnist/small_cnn.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=lf.STEPS)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    names = ["valley", "steepest", "min/10", "fastai_valley"]
    found: dict[str, list[float]] = {name: [] for name in names}
    print(f"{args.config}, {args.steps} steps from {lf.START_LR:g} to {lf.END_LR:g}, beta {lf.BETA}")
    print(f"{'seed':>4}  {'steps':>5}  {'stop':>10}  " + "  ".join(f"{n:>13}" for n in names) + "  seconds")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = load_config(args.config, ["trainer.num_threads=1", *args.overrides, f"trainer.seed={seed}"])
            t0 = time.monotonic()
            result = lf.lr_find(cfg, steps=args.steps, out=Path(tmp) / str(seed))
            seconds = time.monotonic() - t0
            curve = result.curve
            row = {**result.suggestions, "fastai_valley": _fastai_valley(curve.lrs, curve.smoothed, args.steps)}
            for name in names:
                found[name].append(row[name])
            cells = "  ".join(f"{row[n]:>13.3g}" for n in names)
            print(f"{seed:>4}  {len(curve.lrs):>5}  {curve.stop:>10}  {cells}  {seconds:7.1f}", flush=True)
    ratios = "  ".join(f"{max(v) / min(v):>13.2f}" for v in found.values())
    print(f"{'max/min':>4}  {'':>5}  {'':>10}  {ratios}")
    print(f"main suggestion: {lf.MAIN}")


if __name__ == "__main__":
    main()
