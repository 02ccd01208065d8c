"""`visionbench train CONFIG [--set key=value ...] [--resume auto|RUN_DIR]`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from visionbench.config import config_diff, load_config
from visionbench.errors import UserError

_START = time.monotonic()  # "elapsed since the command started" counts from import of the CLI


def train(
    config: Path = typer.Argument(..., help="YAML config file."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
    resume: str | None = typer.Option(None, "--resume", help="'auto' (newest unfinished run) or a run directory."),
) -> None:
    """Train a model from a YAML config; writes runs/<experiment>/<time>-<model>-<dataset>/."""
    from visionbench.engine import rundir
    from visionbench.engine.train import train as run_train

    cfg = load_config(config, set_ or [], experiment=config.stem)
    resume_dir = None
    if resume is not None:
        resume_dir = rundir.find_resumable(cfg) if resume == "auto" else Path(resume)
        stored = load_config(resume_dir / "config.yaml")
        differ = [k for k in config_diff(cfg, stored) if k != "trainer.experiment"]
        if differ:
            raise UserError(f"--resume {resume_dir}: the run was started with other values for {', '.join(differ)}")
        cfg = stored
        if os.environ.get("RANK", "0") == "0":
            print(f"resuming {resume_dir}")
    run_dir = run_train(cfg, resume_dir=resume_dir, start_time=_START)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone writes and prints
        return
    from visionbench.report.plots import plot_run

    plot_run(run_dir)
    print(f"run directory: {run_dir}")
