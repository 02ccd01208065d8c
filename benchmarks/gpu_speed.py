"""Issue 8's speed table: Fashion-MNIST records, our loop against a timm-style DataLoader loop, the CIFAR-10 path.

    python benchmarks/gpu_speed.py                      # every line, 5 seeds (on one GPU: ~20 min of device time)
    python benchmarks/gpu_speed.py --lines 94,95 --seeds 5
    python benchmarks/gpu_speed.py --profile configs/fashion_mnist/speed_94.yaml   # where the time goes
    python benchmarks/gpu_speed.py --smoke              # tiny sizes, any machine: checks the harness, not the speed

Lines and what each times (every figure is printed with mean, min-max spread and n):

- `94`, `95`, `10min`: `visionbench train configs/fashion_mnist/{speed_94,speed_95,best_10min}.yaml` in this
  process, once per seed. *time* = the train() call's wall time minus its data step (`seconds.data` in
  summary.json: reading the files, moving the uint8 images to the GPU): model build, compile, training, the
  run directory's writes and the final flip-TTA evaluation are all inside. Before the seeds, one warm-up run (seed
  1000, not counted) fills torch.compile's caches; its extra time over the mean is the *compile warm-up* line.
  The data step is its own line.
- `timm`: timm's resnet18 at 32 px (CIFAR-shaped uint8 data, 50k images, flip + 2 px translation, bf16,
  channels_last, batch 256, SGD): images/s of our loop (`visionbench train`, device-resident data, batched
  augmentation) against a timm-style loop (torch Dataset with per-image torchvision transforms, DataLoader
  workers with pinned memory, timm's PrefetchLoader normalising on a side stream). Epoch times after the first.
- `cifar`: `configs/cifar10/fastnet.yaml` on CIFAR-shaped data (50k random uint8 images, 3x32x32): training
  images/s over the epochs after the first (compile) and before the last (evaluation), and the projected time of
  airbench94's 9.9 epochs, 9.9 x 50,000 / (images/s).

Timings synchronise the GPU at every boundary. Nothing is excluded that is not printed on its own line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visionbench import layout  # noqa: E402
from visionbench.config import load_config  # noqa: E402
from visionbench.engine.train import train  # noqa: E402

RECORDS = {  # line -> (config, accuracy target %, time target s, label)
    "94": ("configs/fashion_mnist/speed_94.yaml", 94.0, 3.0, "Fashion-MNIST test accuracy >= 94.0 %"),
    "95": ("configs/fashion_mnist/speed_95.yaml", 95.0, 15.0, "Fashion-MNIST test accuracy >= 95.0 %"),
    "10min": ("configs/fashion_mnist/best_10min.yaml", 96.5, 600.0, "best Fashion-MNIST accuracy within 10 min"),
}
CIFAR_SHAPED = ["data.name=synthetic", "data.val_fraction=0"]  # + kwargs below
SMOKE = ["data.subset=1024", "data.test_subset=512", "trainer.epochs=2", "trainer.eval_every_epochs=2"]


class EpochTimer:
    """A loop callback: wall seconds of each epoch (training, and evaluation when the epoch has one)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self._t = device, [], 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def before_epoch(self, state) -> None:
        self._sync()
        self._t = time.perf_counter()

    def after_epoch(self, state) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._t)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(config: str, overrides: list[str], out: Path, timer: EpochTimer | None = None) -> dict:
    """Train one config in this process; returns its summary.json plus `wall` (the train() call's seconds)."""
    sets = [*overrides, f"trainer.out_dir={out}", "trainer.progress=lines"]
    cfg = load_config(ROOT / config, sets, experiment=Path(config).stem)
    t0 = time.perf_counter()
    run_dir = train(cfg, callbacks=[timer] if timer else ())
    wall = time.perf_counter() - t0
    summary = json.loads((run_dir / layout.SUMMARY).read_text())
    return {**summary, "wall": wall}


def stats(values: list[float], digits: int = 2) -> str:
    """'mean (min-max, n=N)'."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f}, n={len(values)})"


def record_line(key: str, seeds: int, out: Path, smoke: bool) -> list[list[str]]:
    config, acc_target, time_target, label = RECORDS[key]
    extra = SMOKE if smoke else []
    warm = run(config, [*extra, "trainer.seed=1000"], out)
    accs, times, data = [], [], []
    for seed in range(seeds):
        s = run(config, [*extra, f"trainer.seed={seed}"], out)
        accs.append(100 * s["final"]["test/acc1"])
        times.append(s["wall"] - s["seconds"]["data"])
        data.append(s["seconds"]["data"])
    warm_extra = (warm["wall"] - warm["seconds"]["data"]) - statistics.fmean(times)
    met = statistics.fmean(accs) >= acc_target and statistics.fmean(times) <= time_target
    return [
        [label, f"<= {time_target:g} s", f"{stats(accs)} %", f"{stats(times)} s", "yes" if met else "no"],
        ["  data onto the device (not timed above)", "", "", f"{stats(data)} s", ""],
        ["  compile warm-up (first run's extra, not timed above)", "", "", f"{warm_extra:.2f} s", ""],
    ]


def ours_images_per_s(n: int, epochs: int, out: Path, smoke: bool) -> list[float]:
    timer = EpochTimer(device())
    overrides = [
        *CIFAR_SHAPED,
        f"data.kwargs={{num_classes: 10, n_train: {n}, n_test: 1000, channels: 3, size: 32}}",
        "data.augment.flip=true",
        "data.augment.translate_pixels=2",
        "model.name=timm:resnet18",
        "trainer.batch_size=256",
        f"trainer.epochs={epochs}",
        f"trainer.eval_every_epochs={epochs}",
        "trainer.precision=bf16",
        "trainer.channels_last=true",
        "trainer.checkpoint_every_minutes=null",
        "trainer.checkpoint_every_epochs=null",
        "optim.name=sgd",
        "optim.lr=0.1",
    ]
    run("configs/smoke/synthetic.yaml", overrides, out, timer)
    per_epoch = (n // 256) * 256
    return [per_epoch / t for t in timer.times[1:-1]]


class UInt8Images(torch.utils.data.Dataset):
    """A torchvision-style dataset: HWC uint8 numpy images, a per-image transform returning a uint8 CHW tensor
    (timm's prefetcher path normalises on the GPU)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        from torchvision.transforms import v2

        self.images, self.targets = images, targets
        self.transform = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=2), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.targets[i])


def timm_style_images_per_s(n: int, epochs: int) -> list[float]:
    import timm
    from timm.data.loader import PrefetchLoader

    dev = device()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, n)
    workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        UInt8Images(images, targets),
        batch_size=256,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=True,
    )
    loader = PrefetchLoader(loader, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device=dev)
    model = timm.create_model("resnet18", num_classes=10).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    timer = EpochTimer(dev)
    for _ in range(epochs):
        timer.before_epoch(None)
        for x, y in loader:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        timer.after_epoch(None)
    per_epoch = (n // 256) * 256
    return [per_epoch / t for t in timer.times[1:]]


def timm_line(out: Path, smoke: bool) -> list[list[str]]:
    n, epochs = (2048, 3) if smoke else (50_000, 4)
    ours = ours_images_per_s(n, epochs + 1, out, smoke)  # +1: the last epoch holds the evaluation
    theirs = timm_style_images_per_s(n, epochs)
    ratio = statistics.fmean(ours) / statistics.fmean(theirs)
    return [
        ["timm resnet18 32 px bf16: our loop, images/s", "", "", stats(ours, 0), ""],
        ["timm resnet18 32 px bf16: timm-style DataLoader loop, images/s", "", "", stats(theirs, 0), ""],
        ["  ratio ours / timm-style", ">= 1.5x", "", f"{ratio:.2f}x", "yes" if ratio >= 1.5 else "no"],
    ]


def cifar_line(out: Path, smoke: bool) -> list[list[str]]:
    n, n_test, epochs = (2048, 1000, 4) if smoke else (50_000, 10_000, 6)
    timer = EpochTimer(device())
    overrides = [
        *CIFAR_SHAPED,
        f"data.kwargs={{num_classes: 10, n_train: {n}, n_test: {n_test}, channels: 3, size: 32}}",
        f"trainer.epochs={epochs}",
        f"trainer.eval_every_epochs={epochs}",
    ]
    s = run("configs/cifar10/fastnet.yaml", overrides, out, timer)
    per_epoch = (n // 1024) * 1024
    rates = [per_epoch / t for t in timer.times[1:-1]]
    projected = 9.9 * 50_000 / statistics.fmean(rates)
    return [
        ["CIFAR-10 path (fastnet, CIFAR-shaped data): images/s", "", "", stats(rates, 0), ""],
        ["  projected time of 9.9 epochs x 50,000 images", "<= 2.6 s", "", f"{projected:.2f} s",
         "yes" if projected <= 2.6 else "no"],
        ["  compile warm-up: first epoch minus a later one", "", "", f"{timer.times[0] - timer.times[1]:.2f} s", ""],
        [f"  last epoch incl. flip-TTA evaluation of {n_test:,} images", "", "", f"{timer.times[-1]:.2f} s", ""],
        ["  data onto the device", "", "", f"{s['seconds']['data']:.2f} s", ""],
    ]  # fmt: skip


def profile(config: str, steps: int, out: Path) -> None:
    """torch.profiler over `steps` optimizer steps of `config` (after one warm-up epoch), top ops by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    class Profile:
        def __init__(self):
            self.prof, self.n = None, 0

        def before_epoch(self, state):
            if state.epoch == 1:
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof = torch_profile(activities=acts)
                self.prof.__enter__()

        def after_batch(self, state):
            if self.prof is not None:
                self.n += 1
                if self.n == steps:
                    self.prof.__exit__(None, None, None)
                    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
                    print(self.prof.key_averages().table(sort_by=key, row_limit=20))
                    self.prof = None
                    state.should_stop = True

    cfg = load_config(ROOT / config, [f"trainer.out_dir={out}", "trainer.progress=lines", "trainer.epochs=3"])
    train(cfg, callbacks=[Profile()])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="94,95,10min,timm,cifar")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness on any machine")
    parser.add_argument("--profile", metavar="CONFIG", help="profile CONFIG instead of measuring")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps profiled")
    parser.add_argument("--out", type=Path, help="run directories (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.profile:
            profile(args.profile, args.steps, out)
            return 0
        dev = device()
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
        print(f"# {name} · torch {torch.__version__} · {'smoke sizes' if args.smoke else 'full sizes'}")
        rows = []
        for key in args.lines.split(","):
            if key in RECORDS:
                rows += record_line(key, args.seeds, out, args.smoke)
            elif key == "timm":
                rows += timm_line(out, args.smoke)
            elif key == "cifar":
                rows += cifar_line(out, args.smoke)
            else:
                parser.error(f"--lines: unknown line {key!r} (expected 94, 95, 10min, timm, cifar)")
        print("| measure | target | accuracy | time or rate | met |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
