"""`visionbench lr-find CONFIG [--set key=value ...] [--start-lr X] [--end-lr Y] [--steps N] [--out DIR] [--seed N]`.

Options left out take the defaults of `visionbench.engine.lr_find` (START_LR, END_LR, STEPS, BETA): like the
config's, they live in one place, not in this parser.
"""

from __future__ import annotations

from pathlib import Path

import typer

from visionbench.config import load_config


def lr_find(
    config: Path = typer.Argument(..., help="YAML config file."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: dotted.key=value (repeatable)."),
    start_lr: float | None = typer.Option(None, "--start-lr", help="First learning rate of the sweep [1e-7]."),
    end_lr: float | None = typer.Option(None, "--end-lr", help="Last learning rate of the sweep [10]."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps, one learning rate each [500]."),
    beta: float | None = typer.Option(None, "--beta", help="Smoothing of the loss (EMA factor) [0.98]."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder [<trainer.out_dir>/<experiment>/lr_find-<time>-<model>-<dataset>]."
    ),
    seed: int | None = typer.Option(None, "--seed", help="trainer.seed (the same as --set trainer.seed=N)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier lr-find result in --out."),
) -> None:
    """Learning-rate range test (Smith, 2015): an exponential lr sweep on the config's model, data and optimizer.

    Prints the suggested optim.lr values and writes lr_find.csv, lr_find.png, lr_find.json and config.yaml into
    a new folder (--out: a new or empty one, or an earlier lr-find result with --overwrite).
    """
    from visionbench.engine.lr_find import MAIN, cannot_write
    from visionbench.engine.lr_find import lr_find as run_lr_find
    from visionbench.report.plots import plot_lr_find

    overrides = [*(set_ or []), *([f"trainer.seed={seed}"] if seed is not None else [])]
    cfg = load_config(config, overrides, experiment=config.stem)
    given = {"start_lr": start_lr, "end_lr": end_lr, "steps": steps, "beta": beta}
    result = run_lr_find(cfg, out=out, overwrite=overwrite, **{k: v for k, v in given.items() if v is not None})
    folder = result.files["csv"].parent
    try:  # the engine writes the result, the report layer draws it
        result.files["png"] = plot_lr_find(folder, title=f"{cfg.model.name} on {cfg.data.name}")
    except OSError as e:
        raise cannot_write(folder, e) from None
    curve = result.curve
    if curve.stop != "end":
        reason = "the smoothed loss diverged" if curve.stop == "diverged" else "the loss was not finite"
        print(f"stopped after {len(curve.lrs)} steps at lr {curve.lrs[-1]:.3g}: {reason}")
    for name, lr in result.suggestions.items():
        note = "  (suggested optim.lr)" if name == MAIN else ""
        print(f"{name + ':':<10}{lr:.3g}{note}")
    print(f"curve: {result.files['csv']}")
    print(f"plot: {result.files['png']}")
