"""`visionbench analyze RUN_DIR --suite erf,pca,robustness,consistency,frequency [--split test] [--images 2000]`."""

from __future__ import annotations

from pathlib import Path

import typer


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
    from visionbench.analysis.suite import check_parts, run_suite
    from visionbench.engine.inference import check_split, load_run, split_images, split_outputs

    parts = check_parts(suite)
    check_split(split)
    run = load_run(run_dir, weights)
    x, y = split_images(run, split, images)
    split_outputs(run, x, f"{run_dir}: {split}")  # a model that overflows on the clean images: say so, not NaN tables
    print(f"{len(x)} {split} images of {run_dir}")
    for result in run_suite(run, run_dir, x, y, parts):
        if result.rows is None:
            print(f"{result.title}: {result.path}")
            continue
        keys = list(result.rows[0])
        print(f"\n{result.title} ({result.path}):")
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in result.rows:
            print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
