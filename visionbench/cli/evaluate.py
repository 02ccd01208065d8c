"""`visionbench eval RUN_DIR [--split test] [--tta none|flip] [--weights best|last]`."""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench.errors import UserError


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    split: str = typer.Option("test", help="train, val or test."),
    tta: str = typer.Option("none", help="Test-time augmentation: none or flip."),
    weights: str = typer.Option("best", help="best (checkpoints/best.safetensors) or last (checkpoints/last)."),
) -> None:
    """Evaluate a run's weights on a split; prints the metrics and saves them as eval-<split>-<tta>-<weights>.json."""
    from visionbench.config import load_config
    from visionbench.data import build_datasets
    from visionbench.engine.checkpoint import load_run_weights
    from visionbench.engine.loop import evaluate as run_eval
    from visionbench.engine.runtime import resolve_device
    from visionbench.engine.train import build_model, eval_loader
    from visionbench.tasks import build_task
    from visionbench.utils.io import read_json, write_json

    if tta not in ("none", "flip"):
        raise UserError(f"--tta: expected none or flip, got {tta!r}")
    if weights not in ("best", "last"):
        raise UserError(f"--weights: expected best or last, got {weights!r}")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", [f"trainer.tta={tta}"])
    device = resolve_device(cfg.trainer.device)
    data = build_datasets(cfg.data)
    task = build_task(cfg.task, data.info)
    saved = read_json(run_dir / "summary.json").get("task_stats") if (run_dir / "summary.json").is_file() else None
    if saved:  # the standardisation the run trained with, not one recomputed from today's files
        task.load_stats(saved)
    else:
        task.fit_targets(data.train.targets)
    model, _, _ = build_model(cfg, data)
    load_run_weights(run_dir, model, weights)
    model.to(device)
    metrics, _, _ = run_eval(model, eval_loader(data, split, cfg, device), task.to(device), device, cfg.trainer)
    result = {"split": split, "tta": tta, "weights": weights, **{f"{split}/{k}": v for k, v in metrics.items()}}
    write_json(run_dir / f"eval-{split}-{tta}-{weights}.json", result)
    for key, value in result.items():
        print(f"{key}\t{value}")
