"""`visionbench data info NAME` and `visionbench data simulate-lensing`."""

from __future__ import annotations

import sys

import typer

from visionbench.utils.progress import CountingProgress

app = typer.Typer(help="Dataset commands.", no_args_is_help=True)


@app.command("info")
def info(
    name: str = typer.Argument(..., help="A registered dataset name (a misspelt one gets the closest names)."),
    root: str | None = typer.Option(None, help="Folder searched first for the files."),
    download: bool = typer.Option(False, help="Download the files when they are missing."),
) -> None:
    """Show a dataset's task, classes, split sizes and normalisation statistics."""
    from visionbench.data.description import describe

    for key, value in describe(name, root, download).items():
        print(f"{key:<11} {value}")


@app.command("simulate-lensing")
def simulate_lensing(
    preset: str = typer.Option(
        ..., help='model_i (150x150, 0.05"/px), model_ii (Euclid-like) or model_iii (HST-like).'
    ),
    n: int = typer.Option(..., "--n", help="Number of images."),
    out: str | None = typer.Option(None, help="Output folder (default: the visionbench cache)."),
    seed: int | None = typer.Option(None, help="Image i is drawn from numpy's default_rng([seed, i])."),
    variant: str | None = typer.Option(None, help="regression (target log10 m_a) or classes (none/cdm/axion)."),
    substructure: str | None = typer.Option(None, help="Substructure of every image in the regression variant: axion."),
    workers: int | None = typer.Option(None, help="Processes; each builds its lenstronomy model once."),
    chunk_size: int | None = typer.Option(None, help="Images rendered and written per step."),
) -> None:
    """Simulate DeepLense-style strong-lensing images with lenstronomy into a folder `deeplense` reads.

    An interrupted run resumes where it stopped when re-run with the same options.
    """
    from visionbench.data import lensing_sim

    # None means "the function's own default": defaults live in lensing_sim.simulate only
    options = dict(seed=seed, variant=variant, substructure=substructure, workers=workers, chunk_size=chunk_size)
    kwargs = {k: v for k, v in options.items() if v is not None}
    progress = CountingProgress("simulating", bar=sys.stderr.isatty())
    with progress:
        folder = lensing_sim.simulate(preset, n, out, progress=progress, **kwargs)
    if progress.counted == 0:
        print(f"{folder}  (already complete: nothing simulated)")
    else:
        rate = progress.counted / max(progress.seconds, 1e-9)
        print(f"{folder}  ({progress.counted} images in {progress.seconds:.1f}s, {rate:.1f} images/s)")
