"""`visionbench analyze RUN_DIR --suite erf,pca,robustness,consistency,frequency [--split test] [--images 2000]`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import typer

from visionbench import layout
from visionbench.errors import UserError


def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    suite: str = typer.Option(
        "robustness,consistency,frequency,pca,erf", "--suite", help="Comma-separated: erf, pca, robustness, ..."
    ),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    images: int = typer.Option(2000, "--images", min=10, help="Images of the split analysed (the first N)."),
    weights: str = typer.Option("best", "--weights", help="best or last."),
) -> None:
    """Robustness, consistency, frequency, feature embeddings and the effective receptive field of a run."""
    import torch

    from visionbench.analysis import suite as S
    from visionbench.cli.predict import check_finite_outputs, load_run, split_images

    parts = [p.strip() for p in suite.split(",") if p.strip()]
    unknown = [p for p in parts if p not in S.SUITES]
    if unknown or not parts:
        raise UserError(f"--suite {unknown[0] if unknown else suite!r}: expected some of {', '.join(S.SUITES)}")
    if split not in ("train", "val", "test"):
        raise UserError(f"--split: expected train, val or test, got {split!r}")
    run = load_run(run_dir, weights)
    x, y = split_images(run, split, images)
    with torch.inference_mode():  # a model that overflows on the clean images makes every table NaN: say so instead
        outputs = torch.cat([run.model(x[i : i + 256]) for i in range(0, len(x), 256)])
    check_finite_outputs(outputs, [f"{run_dir}: {split} image {i}" for i in range(len(x))])
    mean = torch.tensor(run.info.mean or (0.0,))
    std = torch.tensor(run.info.std or (1.0,))
    pixels = (x * std[:, None, None] + mean[:, None, None]).clamp(0, 1)
    ev = S.Evaluator(run.model, run.task, mean, std)
    out_dir = run_dir / layout.ANALYSIS
    out_dir.mkdir(exist_ok=True)
    metric = run.task.main_metric
    print(f"{len(x)} {split} images of {run_dir}")
    if "robustness" in parts:
        rows = S.robustness(ev, pixels, y)
        _table(out_dir / "robustness.csv", rows, f"robustness ({metric})")
        _plot_lines(out_dir / "robustness.png", rows, "corruption", "severity", metric, "Robustness")
    if "consistency" in parts:
        _table(out_dir / "consistency.csv", S.consistency(ev, pixels, run.kind), "consistency")
    if "frequency" in parts:
        rows = S.frequency(ev, pixels, y)
        _table(out_dir / "frequency.csv", rows, f"frequency filtering ({metric})")
        _plot_lines(out_dir / "frequency.png", rows, "filter", "radius", metric, "Frequency filtering")
    if "pca" in parts:
        if run.kind != "classification":
            raise UserError(f"--suite pca: colours points by class; {run_dir} is a {run.kind} run")
        emb = S.embeddings(S.penultimate(run.model, x))
        _plot_embeddings(out_dir / "embeddings.png", emb, y, run.info.class_names)
        print(f"embeddings: {out_dir / 'embeddings.png'}")
    if "erf" in parts:
        erf = S.effective_receptive_field(run.model, x[: min(len(x), 256)])
        _plot_erf(out_dir / "erf.png", erf, run.model.cam_layer)
        print(f"effective receptive field: {out_dir / 'erf.png'}")


def _table(path: Path, rows: list[dict], title: str) -> None:
    from visionbench.utils.io import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
    print(f"\n{title} ({path}):")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


def _plot_lines(path: Path, rows: list[dict], group: str, x: str, metric: str, title: str) -> None:
    from visionbench.report.plots import _figure, _save

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
    _save(fig, path)


def _plot_embeddings(path: Path, emb: dict, targets, class_names) -> None:
    from visionbench.report.plots import _figure, _save

    fig, axes = _figure(2)
    for ax, (name, points) in zip(axes[0], emb.items(), strict=True):
        for c, label in enumerate(class_names):
            sel = targets == c
            ax.scatter(points[sel, 0], points[sel, 1], s=4, label=label)  # drawn literally by _save
        ax.set_title(f"{name.upper() if name == 'pca' else 't-SNE'} of the penultimate features")
    axes[0, 1].legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    _save(fig, path)


def _plot_erf(path: Path, erf, layer: str) -> None:
    from visionbench.report.plots import _figure, _save

    fig, axes = _figure(1)
    im = axes[0, 0].imshow(erf.numpy(), cmap="viridis")
    axes[0, 0].set_title(f"effective receptive field of {layer}'s centre unit", fontsize=9)
    fig.colorbar(im, ax=axes[0, 0])
    _save(fig, path)
