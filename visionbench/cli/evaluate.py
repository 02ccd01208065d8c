"""`visionbench eval RUN_DIR [--split test] [--tta none|flip] [--weights best|last]`."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import typer

from visionbench import layout
from visionbench.errors import UserError


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    split: str = typer.Option("test", help="train, val or test."),
    tta: str = typer.Option("none", help="Test-time augmentation: none or flip."),
    weights: str = typer.Option("best", help=f"best ({layout.BEST}) or last ({layout.LAST})."),
) -> None:
    """Evaluate a run's weights on a whole split (also when the run itself tested on `data.test_subset`); prints
    the metrics and saves them as eval-<split>-<tta>-<weights>.json in the run directory."""
    import torch

    from visionbench.cli.predict import load_run
    from visionbench.config import load_config
    from visionbench.data import build_datasets
    from visionbench.engine.assembly import eval_loader
    from visionbench.engine.loop import evaluate as run_eval
    from visionbench.engine.runtime import resolve_device
    from visionbench.utils.io import write_json

    if tta not in ("none", "flip"):
        raise UserError(f"--tta: expected none or flip, got {tta!r}")
    run = load_run(run_dir, weights)  # the model with its weights, the task with the run's standardisation
    cfg = load_config(run_dir / layout.CONFIG, [f"trainer.tta={tta}"])
    device = resolve_device(cfg.trainer.device)
    data = build_datasets(cfg.data.model_copy(update={"test_subset": None}))  # the whole split, always
    model, task = run.model.to(device), run.task.to(device)
    with warnings.catch_warnings(record=True) as caught:  # torchmetrics warns of NaN before we can say why
        warnings.simplefilter("always")
        metrics, logits, _ = run_eval(model, eval_loader(data, split, cfg, device), task, device, cfg.trainer)
    bad = int((~torch.isfinite(logits.reshape(len(logits), -1))).any(1).sum())
    if bad:  # weights and data are checked finite when read: the model overflows, and no metric would mean anything
        raise UserError(
            f"{run_dir}: the model's outputs are not finite (NaN or infinite) on {bad} of {len(logits)} {split} "
            "images; its weights are finite, so the model overflows on them"
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    images = len(getattr(data, split)) if getattr(data, split, None) is not None else 0
    result = {
        "split": split,
        "images": images,
        "tta": tta,
        "weights": weights,
        # a metric undefined on this split (from finite outputs) is null in the JSON, not NaN (invalid JSON)
        **{f"{split}/{k}": v if math.isfinite(v) else None for k, v in metrics.items()},
    }
    path = run_dir / layout.eval_result(split, tta, weights)
    write_json(path, result)
    for key, value in result.items():
        print(f"{key}\t{'undefined' if value is None else value}")
    print(f"wrote {path}")
