"""Fixture run directories written file by file (config.yaml, metrics.csv, summary.json and the task's artifacts),
shaped like the ones `visionbench train` writes, so report tests need no training and their numbers are exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from visionbench import layout


def write_run(
    root: Path,
    name: str,
    *,
    model: str = "small_cnn",
    dataset: str = "mnist",
    seed: int = 0,
    status: str = "finished",
    value: float = 0.9,
    metric: str = "acc1",
    mode: str = "max",
    epochs: int = 3,
    completed: int | None = None,
    params: int = 41030,
    seconds: float = 30.0,
    error: str | None = None,
    data_kwargs: dict[str, Any] | None = None,
    subset: int | None = None,
    lr: float = 0.05,
    task: str = "ClassificationTask",
    test_details: dict[str, Any] | None = None,
    summary: bool = True,
    train_metric: bool = False,
) -> Path:
    """One run directory `root/name`. A finished run reaches `value` on test at its last epoch (and `value` + 0.005
    on validation); an unfinished one stops after `completed` epochs; `summary=False` leaves summary.json out;
    `train_metric` adds the columns `wall_time` and `train/<metric>` (`value` - 0.05 at the last epoch)."""
    run = root / name
    run.mkdir(parents=True)
    completed = epochs if completed is None else completed
    config = {
        "data": {"name": dataset, "subset": subset, "split_seed": 0, "kwargs": data_kwargs or {}},
        "model": {"name": model, "kwargs": {}},
        "task": {"name": None},
        "optim": {"name": "sgd", "lr": lr},
        "trainer": {"epochs": epochs, "seed": seed, "out_dir": str(root.parent), "experiment": root.name},
    }
    (run / layout.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    header = ["epoch", "step", "elapsed_seconds", "lr", "train/loss", f"val/{metric}", "val/loss"]
    header += [f"test/{metric}", "test/loss"]
    if train_metric:
        header[3:3], header[6:6] = [layout.WALL_TIME], [f"train/{metric}"]
    rows = []
    for epoch in range(1, completed + 1):
        row = {"epoch": epoch, "step": 10 * epoch, "elapsed_seconds": 10.0 * epoch, "lr": lr}
        row |= {"train/loss": 1.0 / epoch, f"val/{metric}": value + 0.005 - 0.01 * (completed - epoch)}
        row |= {"val/loss": 1.1 / epoch, f"test/{metric}": "", "test/loss": ""}
        if epoch == completed and status == "finished":
            row |= {f"test/{metric}": value, "test/loss": 1.2 / epoch}
        if train_metric:
            row |= {
                layout.WALL_TIME: 1767261600.125 + 10 * epoch,
                f"train/{metric}": value - 0.05 * (completed - epoch + 1),
            }
        rows.append(row)
    with open(run / layout.METRICS, "w", newline="") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if not summary:
        return run
    final = {k: v for k, v in rows[-1].items() if v != ""} if rows else {}
    best = {"epoch": completed, f"val/{metric}": value + 0.005} if rows else {}
    if status == "finished":
        best[f"test/{metric}"] = value
    record = {
        "status": status,
        "experiment": root.name,
        "model": model,
        "dataset": dataset,
        "task": task,
        "main_metric": metric,
        "mode": mode,
        "params": params,
        "flops": 10 * params,
        "epochs": epochs,
        "epochs_completed": completed,
        "final": final,
        "best": best,
        **({"test_details": test_details} if test_details else {}),
        "seconds": {"data": 1.0, "train": seconds - 3, "eval": 2.0, "total": seconds},
        "error": error,
    }
    (run / layout.SUMMARY).write_text(json.dumps(record, indent=2))
    return run


@pytest.fixture
def make_run():
    """`make_run(root, name, **options)`: see `write_run`."""
    return write_run


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """An experiment folder: small_cnn on MNIST over 3 seeds and on Fashion-MNIST once, resnet18 running on MNIST
    and failed on Fashion-MNIST, vit_tiny on MNIST with a truncated summary.json."""
    exp = tmp_path / "runs" / "exp"
    for i, value in enumerate((0.90, 0.91, 0.92)):
        write_run(exp, f"20260101-10000{i}-small_cnn-mnist", seed=i, value=value, seconds=30.0 + 2 * i)
    write_run(exp, "20260101-100100-small_cnn-fashion-mnist", dataset="fashion-mnist", value=0.85, epochs=5, seconds=50)
    common = {"model": "resnet18", "params": 11173962, "epochs": 10, "seconds": 400.0}
    write_run(exp, "20260101-100200-resnet18-mnist", status="running", completed=3, value=0.8, **common)
    error = "non-finite loss (nan) at epoch 2, step 120; the last good checkpoint is kept\nTraceback (most recent..."
    write_run(exp, "20260101-100300-resnet18-fashion-mnist", dataset="fashion-mnist", status="failed", completed=1,
              error=error, **common)  # fmt: skip
    vit = write_run(exp, "20260101-100400-vit_tiny-mnist", model="vit_tiny")
    (vit / layout.SUMMARY).write_text('{"status": "fini')  # killed while writing, without our atomic write
    return exp
