"""`visionbench models [NAME] [--config CFG] [--set key=value ...] [--filter PATTERN] [--input-size CxHxW]
[--num-outputs N] [--max-params N] [--json]`."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import typer

from visionbench.errors import UserError


def models(
    name: str | None = typer.Argument(
        None, help="Count one model: a registered name, timm:<name> or torchvision:<name> (with --config: its model)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Count the model a run of this YAML config builds, at its input size and outputs."
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="Override of --config: dotted.key=value (repeatable)."),
    filter_: str | None = typer.Option(
        None, "--filter", help="List the registered models matching an fnmatch pattern, e.g. 'resnet*' (default '*')."
    ),
    input_size: str | None = typer.Option(
        None, help="CxHxW at which params and FLOPs are counted (default: the config's, else 3x32x32)."
    ),
    num_outputs: int | None = typer.Option(
        None, min=1, help="Number of outputs of the head (default: the config's, else 10)."
    ),
    max_params: float | None = typer.Option(
        None, help="List only models with at most this many parameters; one model over it is marked."
    ),
    json_: bool = typer.Option(False, "--json", help="One JSON object per model and line instead of the table."),
) -> None:
    """Count parameters (all, and trainable after model.freeze) and forward FLOPs per image of registered models,
    one model or a config's model, built on the meta device: no weights allocated or loaded, no data read."""
    from visionbench.models._catalog import (
        DEFAULT_INPUT_SIZE,
        DEFAULT_NUM_OUTPUTS,
        measure_model,
        measure_models,
        parse_size,
        size_name,
    )

    if set_ and config is None:
        raise UserError("--set: overrides a config's keys; give --config CFG too")
    if filter_ is not None and (name is not None or config is not None):
        raise UserError("--filter: lists the registered models; give it without NAME and --config")
    outputs = DEFAULT_NUM_OUTPUTS if num_outputs is None else num_outputs
    if config is not None:
        figures, about = _count_config(config, set_ or [], name, input_size, num_outputs, max_params)
    elif name is not None:
        size = parse_size(input_size or DEFAULT_INPUT_SIZE)
        figures = [_budget(measure_model(name, size, outputs), max_params)]
        about = {"input_size": size_name(size), "num_outputs": outputs}
    else:
        size = input_size or DEFAULT_INPUT_SIZE
        figures = measure_models(filter_ or "*", size, outputs, max_params)
        about = {"input_size": size_name(parse_size(size)), "num_outputs": outputs}
    if json_:
        for model in figures:
            print(json.dumps({**_row(model), **about}))
    else:
        _print_table(figures, about)


def _count_config(
    config: Path,
    sets: list[str],
    name: str | None,
    input_size: str | None,
    num_outputs: int | None,
    max_params: float | None,
) -> tuple[list, dict]:
    """The model a run of `config` builds (NAME instead of its model.name), at the config's input size and outputs
    unless given; model.freeze applied, model.pretrained not loaded."""
    from visionbench.config import load_config
    from visionbench.data import static_info
    from visionbench.engine.assembly import create_run_model, prepare_transfer
    from visionbench.models._catalog import measure, parse_size, size_name

    cfg = load_config(config, sets)
    if name is not None:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": name})})
    info = static_info(cfg.data)
    size = parse_size(input_size) if input_size else info.input_size
    outputs = info.num_outputs if num_outputs is None else num_outputs
    if size is None or outputs is None:
        wanted = [flag for flag, value in (("--input-size CxHxW", size), ("--num-outputs N", outputs)) if value is None]
        raise UserError(
            f"{config}: data {cfg.data.name!r} is sized by its files: {info.missing}; give {' and '.join(wanted)}"
        )
    shaped = dataclasses.replace(info, input_size=size, num_outputs=outputs)
    # load=False: model.freeze and the head are what a run gets, and the pretrained weights are not loaded
    figures = measure(
        cfg.model.name,
        lambda: create_run_model(cfg, shaped),
        size,
        prepare=lambda model: prepare_transfer(cfg, model, load=False),
    )
    about = {"input_size": size_name(size), "num_outputs": outputs, "dataset": cfg.data.name, "task": info.task}
    if cfg.model.pretrained:
        about["pretrained_not_loaded"] = cfg.model.pretrained
    return [_budget(figures, cfg.model.max_params if max_params is None else max_params)], about


def _budget(figures, budget: float | None):
    """`figures` with a note when its parameters are over `budget` (--max-params, or the config's model.max_params)."""
    if budget is None or figures.params <= budget:
        return figures
    return dataclasses.replace(figures, problem=f"over the budget of {int(budget):,} parameters")


def _row(model) -> dict:
    row = {"model": model.name, "params": model.params, "trainable": model.trainable, "flops": model.flops}
    return {**row, "note": model.problem} if model.problem else row


def _print_table(figures: list, about: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120)
    # Text, not str: a name or message with `[red]` or `[/x]` in it is shown as written, not as rich markup
    data = f"{about['dataset']} ({about['task'] or 'task unknown'}), " if "dataset" in about else ""
    console.print(Text(f"{data}input {about['input_size']}, {about['num_outputs']} outputs"))
    table = Table("model", "params", "trainable", "GFLOPs", "note")
    for model in figures:
        if model.params is None:
            table.add_row(Text(model.name), "-", "-", "-", Text(model.problem))
        else:
            gflops = f"{model.flops / 1e9:.4f}"
            table.add_row(Text(model.name), f"{model.params:,}", f"{model.trainable:,}", gflops, Text(model.problem))
    console.print(table)
    if "pretrained_not_loaded" in about:
        console.print(
            Text(f"model.pretrained ({about['pretrained_not_loaded']}) is not loaded: counted on the meta device")
        )
