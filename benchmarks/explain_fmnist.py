"""Attribution figures on a Fashion-MNIST run: the model-randomisation sanity check and time / peak memory for
1,000 test images per method.

Trains `configs/fashion_mnist/small_cnn.yaml` for `--epochs` (or takes `--run`), then for every registered method
that applies to the run's model:
- the sanity check of Adebayo et al. (NeurIPS 2018): mean |Spearman rank correlation| between the maps of the
  trained model and of the same architecture with every layer re-initialised, over `--sanity-images` test images
  (low = the maps depend on what the model learned);
- a fresh process that loads the run and the test split and attributes `--images` test images in internal batches
  of `--batch-size`: the attribution's wall time, and the process's peak RSS (ru_maxrss: Python, torch, the model
  and the data included), next to the same process that stops before attributing.

    python benchmarks/explain_fmnist.py [--run RUN_DIR] [--images 1000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visionbench import layout

ROOT = Path(__file__).resolve().parents[1]


def _test_split(run_dir: Path, n: int):
    from visionbench.engine.inference import load_run, split_images

    run = load_run(run_dir)
    return run, *split_images(run, "test", n)


def child(run_dir: Path, method: str, n: int, batch_size: int) -> None:
    """One method in this process: prints a JSON line with seconds and peak RSS."""
    import torch

    from visionbench.analysis.attribution import attribute

    torch.manual_seed(0)
    run, images, targets = _test_split(run_dir, n)
    with torch.inference_mode():
        preds = run.model(images).argmax(1)
    seconds = 0.0
    if method != "none":
        start = time.perf_counter()
        maps = attribute(run.model, images, preds, method, batch_size)
        seconds = time.perf_counter() - start
        assert len(maps) == n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_bytes": peak}))


def sanity(run_dir: Path, n: int) -> dict[str, float]:
    import torch
    from scipy.stats import spearmanr

    from visionbench.analysis.attribution import ATTRIBUTIONS, attribute, to_maps
    from visionbench.engine.assembly import create_run_model

    run, images, targets = _test_split(run_dir, n)
    with torch.inference_mode():
        preds = run.model(images).argmax(1)
    torch.manual_seed(1)
    random = create_run_model(run.cfg, run.info)
    for m in random.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    random.eval()
    out = {}
    for method in [m for m in ATTRIBUTIONS.list() if ATTRIBUTIONS.get(m).applies_to(run.model)]:
        torch.manual_seed(0)
        a = to_maps(attribute(run.model, images, preds, method))
        torch.manual_seed(0)
        b = to_maps(attribute(random, images, preds, method))
        rhos = torch.tensor([spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(a, b, strict=True)])
        out[method] = float(rhos.nan_to_num(0.0).abs().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sanity-images", type=int, default=100)
    parser.add_argument("--child", nargs=2, metavar=("RUN", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), args.child[1], args.images, args.batch_size)
    run_dir = args.run
    if run_dir is None:
        out = Path(tempfile.mkdtemp(prefix="explain-"))
        cmd = [sys.executable, "-m", "visionbench", "train", "configs/fashion_mnist/small_cnn.yaml"]
        cmd += ["--set", f"trainer.epochs={args.epochs}", "--set", f"trainer.out_dir={out}"]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        run_dir = next(out.glob("*/*/"))
    summary = json.loads((run_dir / layout.SUMMARY).read_text())
    print(f"run: {run_dir} ({summary['model']}, {summary['params']:,} params, test/acc1 "
          f"{summary['final']['test/acc1']:.4f})")  # fmt: skip
    rhos = sanity(run_dir, args.sanity_images)
    print(f"\nsanity check, {args.sanity_images} test images: mean |Spearman rho| trained vs re-initialised")
    for method, rho in rhos.items():
        print(f"  {method:22s} {rho:.3f}")
    print(f"\n{args.images} test images, internal batches of {args.batch_size}, one process per method")
    print(f"  {'method':22s} {'seconds':>8s} {'peak RSS':>10s}")
    for method in ("none", *rhos):
        cmd = [sys.executable, __file__, "--child", str(run_dir), method, "--images", str(args.images)]
        cmd += ["--batch-size", str(args.batch_size)]
        line = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rec = json.loads(line)
        label = "(load only)" if method == "none" else method
        print(f"  {label:22s} {rec['seconds']:8.2f} {rec['peak_rss_bytes'] / 2**20:8.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
