"""Seconds per 1,000 simulated lensing images, per preset, in one process (one core).

    python benchmarks/lensing_sim_speed.py [--n 1000] [--presets model_i model_ii model_iii] [--baseline 200]

For each preset: the whole `simulate()` call into a temporary folder (lenstronomy import, model build, numba compile,
rendering, writing the .npy files), then the same count drawn again from the built renderer (steady state, no
writing). `--baseline N` also times N Model II images with one lenstronomy POINT_MASS profile per mass (the
unfused path) for comparison; 0 skips it.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from visionbench.data import lensing_sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--presets", nargs="+", default=list(lensing_sim.PRESETS))
    parser.add_argument("--baseline", type=int, default=200)
    args = parser.parse_args()
    print(f"lenstronomy {lensing_sim.lenstronomy_version()}, numpy {np.__version__}, {platform.processor() or '?'}, "
          f"{os.cpu_count()} CPUs visible, workers=1")  # fmt: skip
    print(f"{'preset':<10} {'images':>6} {'simulate() s':>13} {'s/1000':>7} {'draw-only s/1000':>17}")
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            lensing_sim.simulate(preset, args.n, os.path.join(tmp, "sim"), seed=0, workers=1)
            total = time.perf_counter() - start
        renderer = lensing_sim.Renderer(lensing_sim.PRESETS[preset], "axion")
        renderer.draw(np.random.default_rng(0))
        start = time.perf_counter()
        for i in range(args.n):
            renderer.draw(np.random.default_rng([0, i]))
        draw = time.perf_counter() - start
        print(f"{preset:<10} {args.n:>6} {total:>13.2f} {total / args.n * 1000:>7.2f} {draw / args.n * 1000:>17.2f}")
    if args.baseline:
        plain = lensing_sim.Renderer(lensing_sim.PRESETS["model_ii"], "axion", fused=False)
        plain.draw(np.random.default_rng(0))
        start = time.perf_counter()
        for i in range(args.baseline):
            plain.draw(np.random.default_rng([0, i]))
        draw = time.perf_counter() - start
        print(f"model_ii, one POINT_MASS profile per mass (unfused): {draw / args.baseline * 1000:.2f} s/1000 "
              f"draw-only ({args.baseline} images)")  # fmt: skip


if __name__ == "__main__":
    main()
