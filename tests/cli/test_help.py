"""`--help` of every command and `--version`: click's metavars (TEXT, PATH, none for a flag) where typer 0.29 prints
annotations (`<str>`, `<list[str]>`, `<bool>`), every help text as its command wrote it (rich markup drops
`[model.name]` or `[default: ...]` unless escaped), and every default."""

from __future__ import annotations

import inspect
import re

import pytest
import typer

from visionbench import __version__
from visionbench.cli.main import _register, app, main

# typer's annotation labels: <str>, <int range>, <list[Path]>, ...
PLACEHOLDER = re.compile(r"<(?:bool|str|int|float|path|datetime|uuid|list\[[^\]]*\]|(?:int|float) range)>", re.I)


def _commands(typer_app: typer.Typer = app, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """(argv prefix, callback) of every command and group, from what the modules registered (their help as written)."""
    _register()
    found: list[tuple[tuple[str, ...], object]] = [(prefix, None)]
    for info in typer_app.registered_commands:
        found.append(((*prefix, info.name), info.callback))
    for group in typer_app.registered_groups:
        found += _commands(group.typer_instance, (*prefix, group.name))
    return found


COMMANDS = _commands()


def _row(out: str, name: str) -> str:
    """The help line of one option or argument (a row of a panel)."""
    rows = [line for line in out.splitlines() if re.match(rf"│[\s*]*{re.escape(name)}(\.\.\.)?\s", line)]
    assert rows, f"{name} is not in the help:\n{out}"
    return rows[0]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option, so that a help text is never wrapped


@pytest.mark.parametrize(("argv", "callback"), COMMANDS, ids=[" ".join(c[0]) or "visionbench" for c in COMMANDS])
def test_help_shows_metavars_help_texts_as_written_and_defaults(argv, callback, capsys):
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert not PLACEHOLDER.findall(out), PLACEHOLDER.findall(out)
    assert re.search(r"--help\s+Show this message and exit\.", out), "a flag shows no metavar"
    if callback is None:  # a group: its commands are listed
        return
    assert _flat(inspect.getdoc(callback).split("\n\n")[0]) in _flat(out)
    for name, param in inspect.signature(callback).parameters.items():
        info = param.default
        if isinstance(info, typer.models.OptionInfo):
            row = _row(out, info.param_decls[0] if info.param_decls else f"--{name.replace('_', '-')}")
            is_flag = isinstance(info.default, bool)
            assert re.search(r"\s(TEXT|INTEGER|FLOAT|PATH|KEY=VALUE)\s", row) or is_flag, row
            if info.default not in (None, ...) and not is_flag:
                assert f"[default: {info.default}]" in row, row
        else:
            row = _row(out, name)
        assert _flat(info.help) in _flat(row), f"help text changed: {info.help!r} shown as {row!r}"


def test_flags_with_a_negative_form_show_their_default(capsys):
    assert main(["report", "--help"]) == 0
    assert "[default: no-latest]" in _row(capsys.readouterr().out, "--latest")


def test_version_prints_the_package_and_torch_versions(capsys):
    import torch

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"visionbench {__version__} (torch {torch.__version__}, Python ")
