"""`visionbench data info NAME` (and later: simulate-lensing, ...)."""

from __future__ import annotations

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
