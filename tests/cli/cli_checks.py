"""Checks shared by the CLI tests."""

from __future__ import annotations

from visionbench.cli.main import main


def refused(capsys, argv: list, needle: str) -> str:
    """Run `main(argv)` in-process and require bad input's answer: exit 2, nothing on stdout, one `error:` line on
    stderr holding `needle`, no traceback; returns that line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert needle in err, err
    return err
