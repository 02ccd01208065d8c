"""Fixtures of the reliability suites, and the count of generated bad inputs printed after the tests."""

from __future__ import annotations

import pytest
from fuzzing import TRIED

from visionbench.data import sources


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder for every example's files; the cwd (so a default `runs/` lands here), no $VISIONBENCH_DATA, and any
    download attempt fails the test."""
    folder = tmp_path_factory.mktemp("fuzz")

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"fuzzing tried to download {url}")

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VISIONBENCH_DATA", raising=False)
        mp.chdir(folder)
        mp.setattr(sources, "download", no_network)
        yield folder


def pytest_terminal_summary(terminalreporter):
    if TRIED:
        parts = ", ".join(f"{k} {n}" for k, n in sorted(TRIED.items()))
        total = sum(TRIED.values())
        terminalreporter.write_line(f"fuzzing: {total} generated bad inputs refused in one line ({parts})")
