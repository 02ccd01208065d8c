"""Wall time to >= 91.0 % Fashion-MNIST test accuracy: visionbench vs a notebook-style PyTorch baseline.

Run: `python benchmarks/fmnist_cpu.py` (or `make bench`). Both run as fresh processes, one after the other, on this
machine, and both clocks start when the process is launched (interpreter start, imports and dataset loading
included):

(a) `visionbench train configs/fashion_mnist/fast_cpu.yaml`: the clock stops when the process exits, so it also
    includes the final evaluation and writing the run directory. Its test accuracy is read from summary.json.
(b) the baseline, written the way notebooks do it: torchvision's FashionMNIST + ToTensor/Normalize + DataLoader
    (batch 64, shuffled, default workers), a two-conv CNN, Adam(lr=1e-3), test accuracy evaluated after every
    epoch; its clock stops at the moment an evaluation first reaches the target (its exit is not counted).

Prints both times, the accuracy each reached and the ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visionbench import layout

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("/usr/share/datasets/fashion-mnist")
TARGET = 0.91

BASELINE = r"""
import sys, time
t_launch = float(sys.argv[2])
import torch, torch.nn as nn, torch.nn.functional as F
from torchvision import datasets, transforms

torch.manual_seed(0)
tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
train = datasets.FashionMNIST(sys.argv[1], train=True, download=False, transform=tf)
test = datasets.FashionMNIST(sys.argv[1], train=False, download=False, transform=tf)
train_loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
test_loader = torch.utils.data.DataLoader(test, batch_size=1000)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)
    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)

model = Net()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(1, 31):
    model.train()
    for x, y in train_loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    acc = correct / len(test)
    print(f"epoch {epoch} test_acc {acc:.4f} elapsed {time.time() - t_launch:.1f}", flush=True)
    if acc >= float(sys.argv[3]):
        print(f"REACHED {time.time() - t_launch:.3f} {acc:.4f} {epoch}", flush=True)
        break
"""


def _torchvision_root(tmp: Path) -> Path:
    """torchvision's FashionMNIST reads <root>/FashionMNIST/raw/<name> (uncompressed)."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in SOURCE.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp


def run_visionbench(tmp: Path, config: str, seed: int) -> tuple[float, float, int]:
    out = tmp / f"runs-{seed}"
    cmd = [sys.executable, "-m", "visionbench", "train", config, "--set", f"trainer.out_dir={out}"]
    cmd += ["--set", f"trainer.seed={seed}"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"visionbench failed:\n{proc.stderr}")
    (summary_path,) = out.glob(f"*/*/{layout.SUMMARY}")
    summary = json.loads(summary_path.read_text())
    return wall, summary["final"]["test/acc1"], summary["epochs_completed"]


def run_baseline(tmp: Path) -> tuple[float, float, int]:
    root = _torchvision_root(tmp / "tv")
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", BASELINE, str(root), repr(t0), str(TARGET)], capture_output=True, text=True
    )
    reached = [line.split() for line in proc.stdout.splitlines() if line.startswith("REACHED")]
    if proc.returncode != 0 or not reached:
        raise SystemExit(f"baseline did not reach {TARGET}:\n{proc.stdout}\n{proc.stderr}")
    _, seconds, acc, epochs = reached[0]
    return float(seconds), float(acc), int(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist/fast_cpu.yaml")
    parser.add_argument("--seeds", type=int, default=3, help="visionbench runs (seeds 0..N-1); the baseline runs once")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, target {TARGET:.1%} test accuracy")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = []
        for seed in range(args.seeds):
            wall, acc, epochs = run_visionbench(tmp, args.config, seed)
            runs.append((wall, acc))
            print(
                f"visionbench {args.config} seed {seed}: {wall:.1f} s wall (process start to exit), "
                f"test acc {acc:.2%} after {epochs} epochs"
            )
        walls, accs = [w for w, _ in runs], [a for _, a in runs]
        vb_s = statistics.mean(walls)
        verdict = "reached by every seed" if min(accs) >= TARGET else "NOT reached by every seed"
        print(
            f"visionbench: mean {vb_s:.1f} s (min {min(walls):.1f}, max {max(walls):.1f}, n={len(runs)}), "
            f"test acc mean {statistics.mean(accs):.2%} (min {min(accs):.2%}); target {verdict}"
        )
        if args.skip_baseline:
            return
        bl_s, bl_acc, bl_epochs = run_baseline(tmp)
        print(
            f"baseline (torchvision DataLoader + 2-conv CNN + Adam): {bl_s:.1f} s wall (process start to the "
            f"evaluation reaching the target), test acc {bl_acc:.2%} after {bl_epochs} epochs"
        )
        print(f"speed-up (baseline time / visionbench mean time): {bl_s / vb_s:.2f}x")


if __name__ == "__main__":
    main()
