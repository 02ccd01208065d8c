"""Figures of one run directory, drawn from its files alone: loss and metric curves (metrics.csv) and, for
regression, predicted against true values on the test set (predictions_test.csv, the DeepLense study's figure).

Written under `<run>/plots/` as PNG, each file atomically, so a figure is either whole or absent.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from visionbench.utils.io import read_json, write_bytes

PLOTS = "plots"


def _read_csv(path: Path) -> dict[str, list[float]]:
    """Numeric columns of a CSV (empty cells become NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for key in rows[0] if rows else []:
        try:
            columns[key] = [float(r[key]) if r[key] not in ("", None) else math.nan for r in rows]
        except ValueError:
            continue  # a text column
    return columns


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(5 * ncols, 4), squeeze=False)


def plot_curves(run_dir: Path) -> Path | None:
    """Loss per epoch (train, val, test) and the run's main metric per epoch; None when there is no epoch yet."""
    metrics_csv = run_dir / "metrics.csv"
    if not metrics_csv.is_file():
        return None
    columns = _read_csv(metrics_csv)
    epochs = columns.get("epoch")
    if not epochs:
        return None
    summary = run_dir / "summary.json"
    main = read_json(summary).get("main_metric", "loss") if summary.is_file() else "loss"
    panels = ["loss"] + ([main] if main != "loss" else [])
    fig, axes = _figure(len(panels))
    for ax, metric in zip(axes[0], panels, strict=True):
        for split in ("train", "val", "test"):
            values = columns.get(f"{split}/{metric}")
            if values and not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, label=split)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(run_dir.name, fontsize=9)
    return _save(fig, run_dir / PLOTS / "curves.png")


def plot_predictions(run_dir: Path) -> Path | None:
    """Predicted against true test values with the y = x line and the MAE; None unless the run is a regression."""
    path = run_dir / "predictions_test.csv"
    if not path.is_file():
        return None
    columns = _read_csv(path)
    pairs = [(k, "pred" + k[4:]) for k in columns if k.startswith("true") and "pred" + k[4:] in columns]
    if not pairs:
        return None
    fig, axes = _figure(len(pairs))
    for ax, (true_key, pred_key) in zip(axes[0], pairs, strict=True):
        true, pred = columns[true_key], columns[pred_key]
        mae = sum(abs(t - p) for t, p in zip(true, pred, strict=True)) / len(true)
        lo, hi = min(true + pred), max(true + pred)
        ax.scatter(true, pred, s=4, alpha=0.4, linewidths=0)
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="y = x")
        ax.set(xlabel=f"true {true_key[5:] or ''}".strip(), ylabel="predicted", title=f"test set, MAE {mae:.4g}")
        ax.set_aspect("equal", adjustable="box")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle(run_dir.name, fontsize=9)
    return _save(fig, run_dir / PLOTS / "pred_vs_true.png")


def plot_run(run_dir: Path) -> list[Path]:
    """Every figure that the run's files allow."""
    return [p for p in (plot_curves(run_dir), plot_predictions(run_dir)) if p is not None]
