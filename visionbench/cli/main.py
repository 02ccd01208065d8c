"""The `visionbench` command: one typer app; each subcommand lives in its own module.

Bad input of any kind (a `UserError`, or a usage error from click) ends in one line on stderr and exit status 2;
SIGINT and SIGTERM end in one line and exit status 130 or 143 (utils/interrupts.py); nothing else prints a
traceback unless it is a bug.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from visionbench import version_line
from visionbench.errors import Terminated, UserError, one_line
from visionbench.utils.interrupts import Interrupted, handle_signals, piped_status
from visionbench.utils.typer_compat import WrittenHelpGroup, click_exceptions

app = typer.Typer(
    name="visionbench",
    cls=WrittenHelpGroup,
    help="Run, compare and explain image-recognition experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# In the help's order; each is the function of its module's name in visionbench.cli (`-` as `_`; eval: evaluate).
_COMMANDS = "train lr-find eval predict export models report compare study search explain analyze".split()


def _print_version(value: bool) -> None:
    if value:
        print(version_line())
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
    for command in _COMMANDS:
        module = "evaluate" if command == "eval" else command.replace("-", "_")
        app.command(command)(getattr(importlib.import_module(f"visionbench.cli.{module}"), module))
    from visionbench.cli import data

    app.add_typer(data.app, name="data")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the status code."""
    if argv is not None:  # in-process: a broken pipe is the caller's
        return _main(argv)
    sys.exit(piped_status(lambda: _main(None)))


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _register()
    click_errors, click_aborts = click_exceptions()
    try:
        with handle_signals():  # typer would turn Ctrl-C into a silent exit 130; SIGTERM would not unwind at all
            result = app(args=argv, standalone_mode=False)  # returns the exit code of --help and typer.Exit
        code = result if isinstance(result, int) else 0
    except Interrupted as e:
        print(one_line(str(e)), file=sys.stderr)
        code = e.exit_code
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        code = e.exit_code
    except click_errors as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `visionbench` or `visionbench data`: show the help
            print(e.format_message())
        else:
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
            print(f"error: {one_line(where + e.format_message())}", file=sys.stderr)
        code = e.exit_code
    except (*click_aborts, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        code = 130
    except Terminated as e:  # SIGTERM under torchrun
        print(f"error: {e}", file=sys.stderr)
        code = 143
    return code
