"""`visionbench train CONFIG [--set key=value ...] [--resume auto|RUN_DIR]`, or `visionbench train --resume RUN_DIR`."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import typer

from visionbench import layout
from visionbench.config import load_config
from visionbench.errors import UserError

_START = time.monotonic()  # "elapsed since the command started" counts from import of the CLI


def train(
    config: Path | None = typer.Argument(
        None, help=f"YAML config file (optional with --resume RUN_DIR: the run's own {layout.CONFIG} is used)."
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
    resume: str | None = typer.Option(None, "--resume", help="'auto' (newest unfinished run) or a run directory."),
) -> None:
    """Train a model from a YAML config; writes runs/<experiment>/<time>-<model>-<dataset>/."""
    from visionbench.engine import rundir
    from visionbench.engine.train import train as run_train

    if config is None and resume in (None, "auto"):
        what = "--resume auto" if resume == "auto" else "train"
        raise UserError(f"{what}: expected a CONFIG (YAML file), e.g. visionbench train my_experiment.yaml")
    resume_dir = None
    if resume is None:
        cfg = load_config(config, set_ or [], experiment=config.stem)
    else:
        if resume == "auto":
            cfg = load_config(config, set_ or [], experiment=config.stem)
            resume_dir = rundir.find_resumable(cfg)
        else:
            resume_dir = Path(resume)
        stored_path = resume_dir / layout.CONFIG
        stored = load_config(stored_path)
        # the run's own config, with what the command line asks; only keys that do not change what the run
        # measures (progress display, threads, checkpoint cadence, ...) may differ from the stored ones
        if config is not None:
            cfg = load_config(config, set_ or [], experiment=config.stem)
        else:
            cfg = load_config(stored_path, set_ or [])
        differ = rundir.config_changes(cfg, stored)
        if differ:
            given = "--set" if config is None else f"{config} with --set" if set_ else str(config)
            raise UserError(
                f"--resume {resume_dir}: the run was started with other values for {', '.join(differ)} "
                f"(its {layout.CONFIG} differs from {given}); to continue it as it was started: "
                f"visionbench train --resume {shlex.quote(str(resume_dir))}"
            )
        cfg = rundir.with_run_settings(stored, cfg)
        if os.environ.get("RANK", "0") == "0":
            finished = rundir.read_summary(resume_dir).get("status") == "finished"
            # a finished run has nothing left to train: its checkpoint is checked and its final model evaluated again
            print(f"{resume_dir} finished already; evaluating it again" if finished else f"resuming {resume_dir}")
    run_dir = run_train(cfg, resume_dir=resume_dir, start_time=_START)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone writes and prints
        return
    if cfg.trainer.plots:
        _draw_plots(run_dir)
    print(f"run directory: {run_dir}")


def _draw_plots(run_dir: Path) -> None:
    """The run's figures. A figure that fails to draw does not turn a finished run into a failure: one warning line
    says which; bad input (a run directory deleted meanwhile) is still an error."""
    import logging

    from visionbench.errors import first_line
    from visionbench.report.plots import plot_run
    from visionbench.utils.io import keep_folder

    try:
        with keep_folder(run_dir):  # a run directory deleted now is not re-created for its plots
            plot_run(run_dir)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (the run's results are written; only a figure is missing)
        logging.getLogger(__name__).warning(
            "%s: the run finished but its figures were not drawn (%s)", run_dir, first_line(e)
        )
