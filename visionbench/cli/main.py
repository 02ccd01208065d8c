"""The `visionbench` command: one typer app; each subcommand lives in its own module.

Bad input of any kind (a `UserError`, or a usage error from click) ends in one line on stderr and exit status 2;
SIGINT and SIGTERM end in one line and exit status 130 or 143 (utils/interrupts.py); nothing else prints a
traceback unless it is a bug.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import typing
from pathlib import Path

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from visionbench import __version__
from visionbench.errors import Terminated, UserError
from visionbench.utils.interrupts import Interrupted, handle_signals

# Metavars as click writes them. typer 0.29 shows the annotation instead (`<str>`, `<list[str]>`, `<bool>`).
_METAVARS = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}
_OPTION_METAVARS = {"--set": "KEY=VALUE"}


def _metavar(param: TyperArgument | TyperOption, ctx: typer.Context) -> str | None:
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:  # a repeatable option or a variadic argument: one value's metavar
        (annotation,) = typing.get_args(annotation)
    return _METAVARS.get(annotation) or param.display_type(ctx)  # typer's label for a type not listed above


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return _metavar(self, ctx)


class _Option(TyperOption):
    def display_type_rich(self, ctx: typer.Context) -> str | None:
        if self.metavar is not None:  # declared by the command
            return self.metavar
        if self.is_flag:
            return None
        return _OPTION_METAVARS.get(self.opts[0]) or _metavar(self, ctx)


def _tidy_help(command: typer.core.TyperCommand | TyperGroup) -> None:
    """Help as written: rich markup would take `[model.name]` or `[default: the folder given]` in a help text for a
    tag and drop it, so every help text is escaped; and click's metavars (TEXT, PATH, none for a flag)."""
    from rich.markup import escape

    for attr in ("help", "short_help"):
        if getattr(command, attr, None):
            setattr(command, attr, escape(getattr(command, attr)))
    ctx = typer.Context(command, info_name=command.name, **command.context_settings)
    for param in command.get_params(ctx):  # the --help option too, created here once and kept by the command
        if param.help:
            param.help = escape(param.help)
        # typer >= 0.29 (older ones show click's metavars). typer creates the parameters itself; a subclass that
        # adds only the label method changes the help without touching the commands' modules.
        if hasattr(param, "type_descriptor"):
            if type(param) is TyperOption:
                param.__class__ = _Option
            elif type(param) is TyperArgument:
                param.__class__ = _Argument
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)


class _App(TyperGroup):
    """The root command, built by typer from the registered functions at every call of `app`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self)


app = typer.Typer(
    name="visionbench",
    cls=_App,
    help="Run, compare and explain image-recognition experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        import platform

        import torch

        print(f"visionbench {__version__} (torch {torch.__version__}, Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    pass


def _register() -> None:
    if app.registered_commands:  # once per process: each call would add every command again (main runs in-process)
        return
    from visionbench.cli import (
        analyze,
        compare,
        data,
        evaluate,
        explain,
        export,
        lr_find,
        models,
        predict,
        report,
        search,
        train,
    )

    app.command("train")(train.train)
    app.command("lr-find")(lr_find.lr_find)
    app.command("eval")(evaluate.evaluate)
    app.command("predict")(predict.predict)
    app.command("export")(export.export)
    app.command("models")(models.models)
    app.command("report")(report.report)
    app.command("compare")(compare.compare)
    app.command("search")(search.search)
    app.command("explain")(explain.explain)
    app.command("analyze")(analyze.analyze)
    app.add_typer(data.app, name="data")


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(ClickException types, Abort types) of click and of the copy newer typers vendor as `typer._click`."""
    errors: list[type] = []
    aborts: list[type] = [typer.Abort]
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors.append(module.ClickException)
        aborts += [getattr(module, "Abort", typer.Abort)]
    return tuple(errors), tuple(aborts)


# What str.splitlines splits on: a file name or a value holding one of these must not break the error line.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _one_line(message: str) -> str:
    """`message` with its line breaks escaped as Python writes them (`\\n`), so an error stays one line."""
    return "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in message)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the status code."""
    try:
        code = _main(argv)
        if argv is None:
            sys.stdout.flush()
    except BrokenPipeError:  # `visionbench ... | head`: the reader left; end quietly, as `yes | head` does
        if argv is not None:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at the interpreter's exit
        code = 128 + 13  # the status of a process ended by SIGPIPE
    if argv is None:
        sys.exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _register()
    click_errors, click_aborts = _click_exceptions()
    try:
        with handle_signals():  # typer would turn Ctrl-C into a silent exit 130; SIGTERM would not unwind at all
            result = app(args=argv, standalone_mode=False)  # returns the exit code of --help and typer.Exit
        code = result if isinstance(result, int) else 0
    except Interrupted as e:
        print(_one_line(str(e)), file=sys.stderr)
        code = e.exit_code
    except UserError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        code = e.exit_code
    except click_errors as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `visionbench` or `visionbench data`: show the help
            print(e.format_message())
        else:
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
            print(f"error: {_one_line(where + e.format_message())}", file=sys.stderr)
        code = e.exit_code
    except (*click_aborts, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        code = 130
    except Terminated as e:  # SIGTERM under torchrun
        print(f"error: {e}", file=sys.stderr)
        code = 143
    return code
