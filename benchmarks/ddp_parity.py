"""DDP parity: the same config trained by one process and by `torchrun --nproc-per-node N` (gloo on CPU), with the
same global batch; prints both runs' final metrics and the largest difference between their best weights.

    python benchmarks/ddp_parity.py [--procs 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from visionbench import layout

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/smoke/synthetic.yaml"
SETS = ["trainer.epochs=2", "trainer.deterministic=true", "data.kwargs.n_train=1024", "trainer.num_threads=1"]


def _train(out: Path, procs: int, sets: list[str]) -> Path:
    if procs == 1:
        head = [sys.executable, "-m", "visionbench"]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs)]
        head += ["--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "visionbench"]
    args = [*head, "train", CONFIG] + [a for s in [*sets, f"trainer.out_dir={out}"] for a in ("--set", s)]
    subprocess.run(args, check=True, cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    (run,) = [p.parent for p in out.glob(f"*/*/{layout.CONFIG}")]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    import safetensors.torch

    sets = [*SETS, *args.sets]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: _train(Path(tmp) / f"p{n}", n, sets) for n in (1, args.procs)}
        finals, weights = {}, {}
        for n, run in runs.items():
            summary = json.loads((run / layout.SUMMARY).read_text())
            finals[n] = {k: v for k, v in summary["final"].items() if k not in ("elapsed_seconds", layout.WALL_TIME)}
            weights[n] = safetensors.torch.load_file(str(run / layout.BEST))
    one, many = weights[1], weights[args.procs]
    diff = max((one[k] - many[k]).abs().max().item() for k in one)
    print(f"config: {CONFIG} {' '.join(sets)}")
    for n, final in finals.items():
        print(f"{n} process(es): {final}")
    print(f"largest weight difference over {sum(v.numel() for v in one.values()):,} weights: {diff:.3g}")


if __name__ == "__main__":
    main()
