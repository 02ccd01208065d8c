"""`visionbench data info NAME` and `visionbench data simulate-lensing`."""

from __future__ import annotations

import sys
import time

import typer

app = typer.Typer(help="Dataset commands.", no_args_is_help=True)


@app.command("info")
def info(
    name: str = typer.Argument(..., help="A registered dataset name, e.g. fashion-mnist."),
    root: str | None = typer.Option(None, help="Folder searched first for the files."),
    download: bool = typer.Option(False, help="Download the files when they are missing."),
) -> None:
    """Show a dataset's task, classes, split sizes and normalisation statistics."""
    from visionbench.config import DataConfig
    from visionbench.data import build_datasets

    data = build_datasets(DataConfig(name=name, root=root, download=download, val_fraction=0.0))
    i = data.info
    rows = {
        "dataset": i.name,
        "task": i.task,
        "input_size": "x".join(map(str, i.input_size)),
        "outputs": i.num_outputs,
        "train": len(data.train),
        "test": len(data.test),
        "mean": ", ".join(f"{v:.4f}" for v in i.mean),
        "std": ", ".join(f"{v:.4f}" for v in i.std),
        "classes": ", ".join(i.class_names),
    }
    for key, value in rows.items():
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
    progress = _SimulationProgress(bar=sys.stderr.isatty())
    with progress:
        folder = lensing_sim.simulate(preset, n, out, progress=progress, **kwargs)
    if progress.simulated == 0:
        print(f"{folder}  (already complete: nothing simulated)")
    else:
        rate = progress.simulated / max(progress.seconds, 1e-9)
        print(f"{folder}  ({progress.simulated} images in {progress.seconds:.1f}s, {rate:.1f} images/s)")


class _SimulationProgress:
    """The `progress(done, total)` callback of `simulate`: counts the images of this run, draws a rich bar on a
    terminal (stderr) and nothing otherwise."""

    def __init__(self, bar: bool):
        self.bar, self.first, self.done, self.start = bar, None, 0, time.perf_counter()
        self.progress, self.task_id = None, None

    @property
    def simulated(self) -> int:
        return 0 if self.first is None else self.done - self.first

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:
            self.first, self.start = done, time.perf_counter()
            if self.bar and done < total:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("simulating"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self.progress.start()
                self.task_id = self.progress.add_task("simulate", total=total, completed=done)
        self.done = done
        if self.progress is not None:
            self.progress.update(self.task_id, completed=done)

    def __enter__(self) -> _SimulationProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
