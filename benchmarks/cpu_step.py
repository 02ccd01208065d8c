"""Time of one training step (forward, backward, SGD) per model on this machine, contiguous vs channels_last.

Run: `python benchmarks/cpu_step.py [--batch-size 256] [--input-size 1x28x28] [--steps 15]`. Random inputs; the
first 3 steps are warm-up and not timed; the figure is the mean over the timed steps, in milliseconds. This is the
measurement behind `trainer.channels_last: true` on CPU.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from visionbench.models import create_model, parse_size
from visionbench.registry import MODELS


def step_ms(name: str, size: tuple[int, int, int], batch_size: int, steps: int, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = create_model(name, 10, in_chans=size[0], img_size=size[1:])
    x, y = torch.randn(batch_size, *size), torch.randint(0, 10, (batch_size,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--input-size", default="1x28x28")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--filter", default="*")
    args = parser.parse_args()
    size = parse_size(args.input_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.input_size}")
    print(f"{'model':<18} {'contiguous ms':>14} {'channels_last ms':>17} {'speed-up':>9}")
    for name in MODELS.list(args.filter):
        a = step_ms(name, size, args.batch_size, args.steps, channels_last=False)
        b = step_ms(name, size, args.batch_size, args.steps, channels_last=True)
        print(f"{name:<18} {a:>14.1f} {b:>17.1f} {a / b:>8.2f}x")


if __name__ == "__main__":
    main()
