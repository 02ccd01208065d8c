"""`visionbench analyze RUN_DIR --suite erf,pca,robustness,consistency,frequency,failures,shape_texture [--split test]
[--images 2000] [--top-k 24] [--cue-conflict DIR [--class-map FILE]]`."""

from __future__ import annotations

from pathlib import Path

import typer


def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory written by `visionbench train`."),
    suite: str = typer.Option(
        "robustness,consistency,frequency,pca,erf,failures,shape_texture",
        "--suite",
        help="Comma-separated: erf, pca, robustness, failures, shape_texture, ...",
    ),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    images: int = typer.Option(2000, "--images", min=10, help="Images of the split analysed (the first N)."),
    weights: str = typer.Option("best", "--weights", help="best or last."),
    top_k: int = typer.Option(24, "--top-k", min=1, max=128, help="failures: panels of the gallery (at most 128)."),
    cue_conflict: Path | None = typer.Option(
        None, "--cue-conflict", help="shape_texture: a folder of cue-conflict images named <shape><n>-<texture><m>."
    ),
    class_map: Path | None = typer.Option(
        None, "--class-map", help="YAML/JSON: each stimulus class -> run class names or output indices."
    ),
) -> None:
    """Robustness, consistency, frequency, feature embeddings, the effective receptive field, the failure gallery
    and shape/texture bias of a run."""
    from visionbench.analysis.shape_texture import read_stimuli
    from visionbench.analysis.suite import Options, check_parts, run_suite
    from visionbench.engine.inference import check_split, load_run, split_images, split_outputs
    from visionbench.errors import UserError

    parts = check_parts(suite)
    check_split(split)
    if cue_conflict is not None and "shape_texture" not in parts:
        raise UserError("--cue-conflict: only with --suite shape_texture")
    if class_map is not None and cue_conflict is None:
        raise UserError("--class-map: only with --cue-conflict DIR")
    run = load_run(run_dir, weights)
    stimuli = read_stimuli(cue_conflict, class_map, run) if cue_conflict is not None else None
    x, y = split_images(run, split, images)
    split_outputs(run, x, f"{run_dir}: {split}")  # a model that overflows on the clean images: say so, not NaN tables
    print(f"{len(x)} {split} images of {run_dir}")
    for result in run_suite(run, run_dir, x, y, parts, Options(top_k=top_k, split=split, stimuli=stimuli)):
        if result.rows is None:
            print(f"{result.title}: {result.path}")
            continue
        print(f"\n{result.title} ({result.path}):")
        if not result.rows:
            print("(no rows)")
            continue
        keys = list(result.rows[0])
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in result.rows:
            cells = (f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v) for v in r.values())
            print("| " + " | ".join(cells) + " |")
