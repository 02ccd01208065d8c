"""SIGKILL `visionbench train`, `compare` or `search` (after a random delay, or inside a file write), resume, and
require the result of the uninterrupted run bit for bit (benchmarks/fault_injection.py; its 20-kill figures are in
benchmarks/RESULTS.md). `make test` runs two kills of `train`; compare's and search's single kills are covered by
their own suites (tests/engine/test_compare.py, tests/search/test_search.py), their 20 kills here under -m slow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _harness():
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "benchmarks" / "fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    counts = _harness().run_kills(2, seed=1, work=tmp_path)  # one timed kill, one inside a file write
    assert counts["landed"] == 2 and counts["in_write"] == 1
    assert counts["survived"] == 2, counts


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "compare", "search"])
def test_twenty_kills(tmp_path, command):
    counts = _harness().run_kills(20, seed=0, work=tmp_path, command=command)
    assert counts["survived"] == counts["landed"] == 20, counts
