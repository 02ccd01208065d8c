"""The CIFAR-10 image-mining lab's table (its five models) trained on Fashion-MNIST on this machine.

Run: `python benchmarks/fmnist_lab_table.py [--out runs] [--quick]`. Runs, one after the other as fresh
`visionbench train` processes, the two transfer sources (scikit-learn digits; no ImageNet weights are reachable
offline) and then the five rows of configs/fashion_mnist/lab/. Each transfer row loads its source run from this
invocation (`--set model.pretrained=<source run>`). The wall time of a row is its whole process: interpreter start,
imports, dataset loading, training, every evaluation and writing the run directory.

Prints a markdown table (model, params, epochs, test accuracy, wall time) and copies each run's config.yaml,
metrics.csv and summary.json to benchmarks/results/fmnist_lab/<config stem>/ (not with --quick, which trains one
epoch on 256 images to check that the pipeline works).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from visionbench import layout

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "configs" / "fashion_mnist" / "lab"
SOURCES = {"vgg16_bn_frozen": "digits_vgg16_bn", "resnet18_transfer": "digits_resnet18"}
ROWS = [
    ("digits_vgg16_bn", "source of row 3: VGG-16 (BN) on digits"),
    ("digits_resnet18", "source of row 4: ResNet-18 on digits"),
    ("simple_cnn", "simple CNN"),
    ("cnn_dropout", "CNN + dropout"),
    ("vgg16_bn_frozen", "VGG-16 (BN), frozen transfer"),
    ("resnet18_transfer", "ResNet-18, transfer"),
    ("vit", "ViT"),
]


def newest_finished(folder: Path) -> Path | None:
    for run_dir in sorted(folder.glob("*/"), reverse=True):
        summary = run_dir / layout.SUMMARY
        if summary.is_file() and json.loads(summary.read_text()).get("status") == "finished":
            return run_dir
    return None


def run(stem: str, out: Path, runs: dict[str, Path], quick: bool) -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "visionbench", "train", str(LAB / f"{stem}.yaml"), "--set", f"trainer.out_dir={out}"]
    if stem in SOURCES:
        cmd += ["--set", f"model.pretrained={runs[SOURCES[stem]]}"]
    if quick:
        cmd += ["--set", "trainer.epochs=1", "--set", "data.subset=256"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{stem}: exit {done.returncode}\n{done.stderr[-2000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("run directory: ")][-1]
    return Path(line.removeprefix("run directory: ")), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs", help="trainer.out_dir of the runs")
    parser.add_argument("--quick", action="store_true", help="one epoch on 256 images: a pipeline check, no figures")
    parser.add_argument(
        "--reuse-sources",
        action="store_true",
        help="take each transfer source's newest finished run under --out instead of training it again "
        "(its time is then its summary's seconds.total)",
    )
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results" / "fmnist_lab"
    runs: dict[str, Path] = {}
    rows = ["| model | config | params | epochs | test acc (%) | wall time |", "|---|---|---:|---:|---:|---:|"]
    for stem, label in ROWS:
        reused = newest_finished(args.out / stem) if args.reuse_sources and stem in SOURCES.values() else None
        if reused is not None:
            run_dir, wall = reused, json.loads((reused / layout.SUMMARY).read_text())["seconds"]["total"]
        else:
            run_dir, wall = run(stem, args.out, runs, args.quick)
        runs[stem] = run_dir
        summary = json.loads((run_dir / layout.SUMMARY).read_text())
        acc = summary["final"]["test/acc1"] * 100
        rows.append(
            f"| {label} | `lab/{stem}.yaml` | {summary['params']:,} | {summary['epochs_completed']} | {acc:.2f} | "
            f"{round(wall) // 60} min {round(wall) % 60} s |"
        )
        print(rows[-1], flush=True)
        if not args.quick:
            dest = results / stem
            dest.mkdir(parents=True, exist_ok=True)
            for name in (layout.CONFIG, layout.METRICS, layout.SUMMARY):
                shutil.copy(run_dir / name, dest / name)
    table = "\n".join(rows)
    print(table)
    if not args.quick:
        (results / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
