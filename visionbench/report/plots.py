"""Figures of one run directory, drawn from its files alone: loss and metric curves (metrics.csv, also exported as
`curves.csv`), the test confusion matrix (confusion_matrix_test.json), per-class AP or AUROC bars (summary.json's
`test_details`), the reliability diagram of val and test (reliability_<split>.json) and, for regression, predicted
against true test values (predictions_test.csv, the DeepLense study's figure).

Each figure is written under `<run>/plots/` as PNG (for the HTML report) and SVG (for papers), each file atomically,
so a figure is either whole or absent. Drawn at the end of training and again by `visionbench report`.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from visionbench import layout
from visionbench.errors import UserError
from visionbench.utils.io import read_json, write_bytes, write_text
from visionbench.utils.names import literal_text, missing_glyphs_quiet

ANNOTATE_MAX_CLASSES = 20  # counts printed in confusion-matrix cells up to this many classes
TICKS_MAX_CLASSES = 40  # class names on the axes up to this many classes


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV the run wrote (metrics.csv, predictions_test.csv), bounded like every reader: a regular file of at most
    64 MiB (a FIFO or a link to /dev/zero in its place is refused, naming it)."""
    from visionbench.utils.bounded import JSON_BYTES, read_text

    reader = csv.DictReader(io.StringIO(read_text(path, "CSV table", JSON_BYTES), newline=""))
    return list(reader.fieldnames or []), list(reader)


def _numeric_columns(rows: list[dict[str, str]]) -> dict[str, list[float]]:
    """Numeric columns of CSV rows (empty cells become NaN); text columns are left out."""
    columns: dict[str, list[float]] = {}
    for key in rows[0] if rows else []:
        try:
            columns[key] = [float(r[key]) if r[key] not in ("", None) else math.nan for r in rows]
        except ValueError:
            continue
    return columns


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _figure(ncols: int):
    return _pyplot().subplots(1, ncols, figsize=(5 * ncols, 4), squeeze=False)


def _save(fig, path: Path, png: bool = True, svg: bool = True) -> Path:
    """`path` (.png) and the same figure as .svg beside it, every name in it drawn as written; returns `path`.
    `png=False`: the .svg alone (pass its path); `svg=False`: the .png alone (a grid of images, which an SVG would
    only wrap)."""
    plt = _pyplot()
    images = {}
    try:
        literal_text(fig)
        with missing_glyphs_quiet():
            if png:
                images[path] = io.BytesIO()
                fig.savefig(images[path], format="png", dpi=120, bbox_inches="tight")
            if svg:  # no date and a fixed salt for the element ids (random by default): the same files, the same bytes
                images[path.with_suffix(".svg")] = io.BytesIO()
                with plt.rc_context({"svg.hashsalt": "visionbench"}):
                    fig.savefig(
                        images[path.with_suffix(".svg")], format="svg", bbox_inches="tight", metadata={"Date": None}
                    )
    finally:
        plt.close(fig)
    for target, data in images.items():
        write_bytes(target, data.getvalue())
    return path


def _main_metric(run_dir: Path) -> str:
    """summary.json's main metric; `loss` while there is no readable summary (a run that died early)."""
    try:
        return read_json(run_dir / layout.SUMMARY).get("main_metric", "loss")
    except (UserError, AttributeError):
        return "loss"


def plot_curves(run_dir: Path) -> list[Path]:
    """Loss per epoch (train, val, test) and the run's main metric per epoch, as `curves.png`/`.svg`, with the
    plotted columns of metrics.csv as `curves.csv`; nothing when there is no epoch yet."""
    metrics_csv = run_dir / layout.METRICS
    if not metrics_csv.is_file():
        return []
    _, rows = _read_rows(metrics_csv)
    columns = _numeric_columns(rows)
    epochs = columns.get("epoch")
    if not epochs:
        return []
    from matplotlib.ticker import MaxNLocator

    main = _main_metric(run_dir)
    panels = ["loss"] + ([main] if main != "loss" else [])
    fig, axes = _figure(len(panels))
    plotted = ["epoch"]
    for ax, metric in zip(axes[0], panels, strict=True):
        for split in ("train", "val", "test"):
            key = f"{split}/{metric}"
            values = columns.get(key)
            if values and not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, label=split)
                plotted.append(key)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(run_dir.name, fontsize=9)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(plotted)
    writer.writerows([row.get(k, "") for k in plotted] for row in rows)  # the values as metrics.csv has them
    write_text(run_dir / layout.PLOTS / f"{layout.CURVES}.csv", buf.getvalue())
    return [_save(fig, run_dir / layout.PLOTS / f"{layout.CURVES}.png")]


def plot_confusion(run_dir: Path) -> list[Path]:
    """The test confusion matrix, coloured by the fraction of each true class (row), with counts in the cells up
    to `ANNOTATE_MAX_CLASSES` classes; nothing unless the run is a classification."""
    path = run_dir / layout.artifact(layout.CONFUSION_MATRIX)
    if not path.is_file():
        return []
    data = read_json(path)
    names, matrix = (data.get("class_names"), data.get("rows_true_cols_pred")) if isinstance(data, dict) else (0, 0)
    k = len(names) if isinstance(names, list) else 0
    if not k or not isinstance(matrix, list) or any(not isinstance(r, list) or len(r) != k for r in matrix):
        raise UserError(f"{path}: expected class_names and a square rows_true_cols_pred of the same size")
    import numpy as np

    try:
        counts = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{path}: rows_true_cols_pred holds something other than counts") from None
    if counts.shape != (k, k):
        raise UserError(f"{path}: rows_true_cols_pred has {counts.shape[0]} rows for {k} classes")
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * k + 2), 24.0)  # inches: legible names up to ~40 classes
    fig, ax = _pyplot().subplots(figsize=(side + 1.2, side))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    if k <= TICKS_MAX_CLASSES:
        ax.set_xticks(range(k), [str(n) for n in names], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), [str(n) for n in names], fontsize=8)
    if k <= ANNOTATE_MAX_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            colour = "white" if fractions[i, j] > 0.5 else "black"
            ax.text(j, i, f"{count:.0f}", ha="center", va="center", fontsize=7, color=colour)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"{run_dir.name}\ntest confusion matrix, accuracy {100 * accuracy:.2f} %", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    return [_save(fig, run_dir / layout.PLOTS / f"{layout.CONFUSION_MATRIX}.png")]


def _per_class_figure(values: dict[str, Any], metric: str, run_name: str):
    names = list(values)
    scores = [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values.values()]
    fig, ax = _pyplot().subplots(figsize=(6, min(max(2.5, 0.25 * len(names) + 1.2), 30.0)))
    ax.barh(range(len(names)), [s if s is not None else 0.0 for s in scores], color="tab:blue")
    for i, score in enumerate(scores):
        ax.text(0.01 if score is None else score + 0.01, i, "n/a" if score is None else f"{score:.3f}", va="center")
    scored = [s for s in scores if s is not None]
    title = f"{run_name}\ntest {metric} per class"
    if scored:
        mean = sum(scored) / len(scored)  # the macro mean that the summary's metric reports
        ax.axvline(mean, color="black", linestyle="--", linewidth=1)
        title += f", mean {mean:.3f} (dashed)"
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # first class on top, as in the summary
    ax.set(xlim=(0, 1.15), xlabel=f"{metric} (n/a: no positive in the test set)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_per_class(run_dir: Path) -> list[Path]:
    """Bars of the per-class test AP (multi-label) or AUROC (classification with `task.auroc`) that summary.json
    keeps under `test_details`; nothing when it has none."""
    try:
        details = read_json(run_dir / layout.SUMMARY).get("test_details") or {}
    except (UserError, AttributeError):
        return []
    if not isinstance(details, dict):
        return []
    paths = []
    for key, metric in (("per_class_ap", "AP"), ("per_class_auroc", "AUROC")):
        values = details.get(key)
        if isinstance(values, dict) and values:
            fig = _per_class_figure(values, metric, run_dir.name)
            paths.append(_save(fig, run_dir / layout.PLOTS / f"{key}.png"))
    return paths


def plot_predictions(run_dir: Path) -> list[Path]:
    """Predicted against true test values with the y = x line and the MAE; nothing unless the run is a regression."""
    path = run_dir / layout.artifact(layout.PREDICTIONS, suffix=".csv")
    if not path.is_file():
        return []
    columns = _numeric_columns(_read_rows(path)[1])
    pairs = [(k, "pred" + k[4:]) for k in columns if k.startswith("true") and "pred" + k[4:] in columns]
    if not pairs:
        return []
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
    return [_save(fig, run_dir / layout.PLOTS / "pred_vs_true.png")]


def _reliability_bins(path: Path) -> tuple[dict[str, Any], list[tuple[float, float, int, float, float]]]:
    """A reliability_<split>.json: the file's object and its non-empty bins (low, high, count, mean probability,
    observed frequency); a file that does not hold them is a one-line UserError naming it."""
    data = read_json(path)
    bins = data.get("bins") if isinstance(data, dict) else None
    keys = ("low", "high", "count", "confidence", "observed")
    columns = [bins.get(k) for k in keys] if isinstance(bins, dict) else []
    if len(columns) != len(keys) or not all(isinstance(c, list) and len(c) == len(columns[0]) for c in columns):
        raise UserError(f"{path}: expected bins with equal-length lists {', '.join(keys)}")
    rows = []
    for row in zip(*columns, strict=True):
        if row[2] == 0:
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row):
            raise UserError(f"{path}: a non-empty bin holds something other than finite numbers")
        rows.append(row)
    return data, rows


def plot_reliability(run_dir: Path) -> list[Path]:
    """The reliability diagram of the final model on val and test, one panel per split: each bin's observed
    frequency (bars) against its mean predicted probability (dots), the diagonal a perfectly calibrated model
    follows, the split's ECE and Brier score in the title; nothing unless the task gives probabilities."""
    splits = [s for s in ("val", "test") if (run_dir / layout.artifact(layout.RELIABILITY, s)).is_file()]
    if not splits:
        return []
    fig, axes = _figure(len(splits))
    for ax, split in zip(axes[0], splits, strict=True):
        data, rows = _reliability_bins(run_dir / layout.artifact(layout.RELIABILITY, split))
        low, high, count, confidence, observed = zip(*rows, strict=True) if rows else ((),) * 5
        widths = [h - lo for lo, h in zip(low, high, strict=True)]
        ax.bar(low, observed, width=widths, align="edge", color="tab:blue", alpha=0.7, edgecolor="black")
        ax.plot(confidence, observed, "o", color="tab:red", markersize=3, label="mean predicted probability")
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration")
        title = f"{split}: ECE {_fmt(data.get('ece'))}, Brier {_fmt(data.get('brier'))} ({sum(count)} predictions)"
        ax.set_title(title, fontsize=9)
        kind = data.get("ece_kind")
        xlabel = "predicted probability" + (f" ({kind})" if isinstance(kind, str) else "")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel="observed frequency")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(run_dir.name, fontsize=9, y=1.02)
    return [_save(fig, run_dir / layout.PLOTS / f"{layout.RELIABILITY}.png")]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


PLOTTERS = (plot_curves, plot_confusion, plot_per_class, plot_reliability, plot_predictions)


def plot_run(run_dir: Path) -> list[Path]:
    """Every figure that the run's files allow (PNG paths; an SVG lies beside each)."""
    return [path for plotter in PLOTTERS for path in plotter(run_dir)]


def epoch_series(run_dir: Path, key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one column of the run's metrics.csv, epochs without a value left out; nothing when the
    run has no such column (or no metrics.csv yet)."""
    metrics_csv = run_dir / layout.METRICS
    if not metrics_csv.is_file():
        return [], []
    columns = _numeric_columns(_read_rows(metrics_csv)[1])
    pairs = [(e, v) for e, v in zip(columns.get("epoch", []), columns.get(key, []), strict=False) if not math.isnan(v)]
    return [e for e, _ in pairs], [v for _, v in pairs]


def plot_lines(path: Path, lines: dict[str, tuple[list[float], list[float]]], metric: str, title: str) -> Path:
    """One metric of several runs against the epoch, a line each (a study's curves across its cells): `path`
    (.png) and .svg beside it, and the values as .csv beside them, a column per line."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(1)
    ax = axes[0, 0]
    handles = [ax.plot(x, y, marker="o" if len(x) < 30 else None)[0] for x, y in lines.values()]
    # labels given with their handles: matplotlib would leave a label that starts with `_` out of the legend
    if handles:
        ax.legend(handles, list(lines), fontsize=8)
    ax.set(xlabel="epoch", ylabel=metric, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    epochs = sorted({e for x, _ in lines.values() for e in x})
    by_epoch = [dict(zip(x, y, strict=True)) for x, y in lines.values()]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *lines])
    writer.writerows([f"{e:g}", *(repr(v[e]) if e in v else "" for v in by_epoch)] for e in epochs)
    write_text(path.with_suffix(".csv"), buf.getvalue())
    return _save(fig, path)


def plot_metric_lines(path: Path, rows: list[dict], group: str, x: str, metric: str, title: str) -> Path:
    """analyze's robustness and frequency figures: the metric against `x`, one line per `group` value, the clean
    images' metric (the `none` row) dashed."""
    fig, axes = _figure(1)
    ax = axes[0, 0]
    clean = next((r["metric"] for r in rows if r.get(group) == "none"), None)
    for name in dict.fromkeys(r[group] for r in rows if r[group] != "none"):
        pts = [(r[x], r["metric"]) for r in rows if r[group] == name]
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    if clean is not None:
        ax.axhline(clean, color="grey", linestyle="--", label="clean")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_embeddings(path: Path, emb: dict, targets, class_names) -> Path:
    """analyze's PCA and t-SNE of the penultimate features, (N, 2) points each, coloured by class."""
    fig, axes = _figure(2)
    for ax, (name, points) in zip(axes[0], emb.items(), strict=True):
        for c, label in enumerate(class_names):
            sel = targets == c
            ax.scatter(points[sel, 0], points[sel, 1], s=4, label=label)  # drawn literally by _save
        ax.set_title(f"{name.upper() if name == 'pca' else 't-SNE'} of the penultimate features")
    axes[0, 1].legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    return _save(fig, path)


def plot_erf(path: Path, erf, layer: str) -> Path:
    """analyze's effective receptive field, an (H, W) map of `layer`'s centre unit."""
    fig, axes = _figure(1)
    im = axes[0, 0].imshow(erf.numpy(), cmap="viridis")
    axes[0, 0].set_title(f"effective receptive field of {layer}'s centre unit", fontsize=9)
    fig.colorbar(im, ax=axes[0, 0])
    return _save(fig, path)


def plot_lr_find(folder: Path, title: str) -> Path:
    """The figure of an lr-find folder, `lr_find.png` beside the files it is drawn from: the loss and the smoothed
    loss of lr_find.csv against the lr (log x), each suggestion of lr_find.json marked on the smoothed curve. The y
    range shows the plateau and the descent; a diverging tail runs off the top. A PNG only: the folder holds
    `layout.LR_FIND_FILES` and nothing else."""
    import numpy as np

    columns = _numeric_columns(_read_rows(folder / layout.LR_FIND_CSV)[1])
    lrs, losses, smoothed = columns["lr"], columns["loss"], columns["smoothed_loss"]
    suggestions = read_json(folder / layout.LR_FIND_JSON, what=layout.LR_FIND_JSON)["suggestions"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="0.75", lw=0.8, label="loss")
    ax.plot(lrs, smoothed, color="C0", lw=1.8, label="smoothed loss")
    finite = np.isfinite(np.asarray(smoothed, dtype=np.float64))
    n = len(finite) if finite.all() else int(np.argmin(finite))  # up to the first non-finite loss (none at 0)
    x, y = np.log10(np.asarray(lrs[:n], dtype=np.float64)), np.asarray(smoothed[:n], dtype=np.float64)
    styles = {"valley": ("C3", "o"), "steepest": ("C2", "s"), "min/10": ("C1", "^")}
    for name, lr in suggestions.items():
        color, marker = styles.get(name, ("k", "x"))
        at = float(np.interp(math.log10(lr), x, y))
        ax.axvline(lr, color=color, lw=0.8, ls=":")
        ax.plot([lr], [at], marker=marker, color=color, ls="", ms=8, label=f"{name}: {lr:.2e}")
    m = int(np.argmin(y))
    raw = np.asarray(losses[: m + 1], dtype=np.float64)
    hi, lo = float(np.max(y[: m + 1])), float(min(y[m], np.min(raw, initial=y[m], where=np.isfinite(raw))))
    pad = 0.1 * max(hi - lo, 1e-3 * abs(hi) + 1e-12)
    ax.set_ylim(lo - pad, hi + 3 * pad)
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title=f"lr range test: {title}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    literal_text(fig)  # the model and dataset names in the title are data, not math text
    png = io.BytesIO()
    try:
        with missing_glyphs_quiet():
            fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes(folder / layout.LR_FIND_PNG, png.getvalue())
    return folder / layout.LR_FIND_PNG
