"""The one exception type that the CLI turns into a single line and exit status 2.

Anything raised as `UserError` is the user's input being wrong (a config key, a data file, a checkpoint, a CLI
argument); the message must name the file or key and say what was expected. Everything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), for a one-line UserError."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


class Terminated(BaseException):
    """SIGTERM under torchrun (the agent stopping the other ranks after one failed): unwinds like an interrupt, so
    the run directory records the failure; the files stay as their last atomic write left them."""


# What str.splitlines splits on: a file name or a value holding one of these must not break the error line.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def one_line(message: str) -> str:
    """`message` with its line breaks escaped as Python writes them (`\\n`), so an error stays one line."""
    return "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in message)
