"""What the CLI needs from typer whatever its version: help shown as each command wrote it, with click's metavars,
and the exception types of click or of the copy that newer typers vendor.

typer 0.29 shows a parameter's annotation as its metavar (`<str>`, `<list[str]>`, `<bool>`) where click writes
TEXT, PATH and nothing for a flag; and rich markup would take `[model.name]` or `[default: the folder given]` in a
help text for a tag and drop it.
"""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

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
    """Every help text of `command` and its subcommands escaped for rich, and click's metavars."""
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


class WrittenHelpGroup(TyperGroup):
    """A root command whose help, and every subcommand's, reads as written; typer builds it from the registered
    functions at every call of the app."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self)


def click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
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
