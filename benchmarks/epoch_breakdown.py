"""Where one training epoch's time goes: the data loader alone against full training steps.

    python benchmarks/epoch_breakdown.py [CONFIG] [--set key=value ...] [--epochs 2]

Builds the config's data, loader, model, task and optimizer with visionbench's own builders, then times, for each
epoch after a first warm-up epoch: (a) iterating the training loader alone (indexing, augmentation,
normalisation, memory-format copy, transfer), and (b) the same epoch with forward, loss, backward and optimizer
step. (b) - (a) is the model's share. CUDA is synchronised before every clock read. Dataset building and model
construction are timed separately and excluded from (a) and (b).
"""

from __future__ import annotations

import argparse
import time

import torch

from visionbench.config import load_config
from visionbench.data import LoaderSpec, build_datasets, build_loader
from visionbench.data.transforms import normalize
from visionbench.engine.assembly import build_model
from visionbench.engine.optim import build_optimizer
from visionbench.engine.runtime import autocast, resolve_device, seed_everything
from visionbench.tasks import build_task


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/fashion_mnist/fast_cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up epoch")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    tcfg = cfg.trainer
    device = resolve_device(tcfg.device)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    seed_everything(tcfg.seed)

    start = time.perf_counter()
    data = build_datasets(cfg.data)
    task = build_task(cfg.task, data.info)
    task.fit_targets(data.train.targets)
    spec = LoaderSpec(tcfg.batch_size, train=True, seed=tcfg.seed, channels_last=tcfg.channels_last)
    loader = build_loader(data, "train", cfg.data, device, spec)
    model, params, _ = build_model(cfg, data)
    if hasattr(model, "init_from_data") and not data.streamed:
        model.init_from_data(normalize(data.train.images[:5000], loader.mean.cpu(), loader.std.cpu()))
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    task.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    setup = time.perf_counter() - start
    print(f"{args.config}: {cfg.model.name} ({params:,} params) on {device}, {torch.get_num_threads()} threads, "
          f"{len(loader)} batches of {tcfg.batch_size}; setup (data, model) {setup:.2f} s")  # fmt: skip

    def loader_only(epoch: int) -> float:
        t = _clock(device)
        for _batch in loader.epoch(epoch):
            pass
        return _clock(device) - t

    def full(epoch: int) -> float:
        model.train()
        t = _clock(device)
        for images, targets in loader.epoch(epoch):
            with autocast(device, tcfg.precision):
                loss = task.loss(model(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return _clock(device) - t

    warm = full(0)
    print(f"warm-up epoch (not counted): {warm:.2f} s")
    print(f"{'epoch':>5} {'loader only s':>14} {'full epoch s':>13} {'model share s':>14} {'loader %':>9}")
    for epoch in range(1, args.epochs + 1):
        a, b = loader_only(epoch), full(epoch)
        print(f"{epoch:>5} {a:>14.3f} {b:>13.2f} {b - a:>14.2f} {100 * a / b:>8.1f}%")


if __name__ == "__main__":
    main()
