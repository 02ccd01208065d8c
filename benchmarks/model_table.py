"""Parameters and forward FLOPs of every registered model at 32 px and 64 px, as a markdown table.

    python benchmarks/model_table.py [--in-chans 3] [--num-outputs 10] [--sides 32 64]

Each model is built with its defaults (random init) for each side and measured with `inspect_model` (torch's
FlopCounterMode, attention counted through the math kernel; FLOPs = 2 x multiply-adds). A side a model cannot take
is shown as "-". This is the README's model table.
"""

from __future__ import annotations

import argparse

from visionbench.errors import UserError
from visionbench.models import create_model, inspect_model
from visionbench.registry import MODELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-outputs", type=int, default=10)
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args()
    header = ["model"] + [f"{k} at {s} px" for s in args.sides for k in ("params", "GFLOPs")]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for name in MODELS.list():
        cells = []
        for side in args.sides:
            size = (args.in_chans, side, side)
            try:
                model = create_model(name, args.num_outputs, in_chans=args.in_chans, img_size=(side, side))
                params, flops = inspect_model(model, size, name)
                cells += [f"{params / 1e6:.2f}M", f"{flops / 1e9:.3f}"]
            except UserError:
                cells += ["-", "-"]
        print(f"| `{name}` | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
