"""Atomic writes: a write that fails midway leaves the previous file intact, and new files get the usual mode."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from visionbench import layout
from visionbench.utils.io import atomic_open, write_json, write_text


def test_a_failed_write_keeps_the_previous_version_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / layout.SUMMARY
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [layout.SUMMARY]


def test_written_files_get_the_mode_of_a_new_file_not_mkstemps_0600(tmp_path: Path) -> None:
    write_text(tmp_path / "report.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    mode = stat.S_IMODE((tmp_path / "report.md").stat().st_mode)
    assert mode == 0o666 & ~mask, oct(mode)


def test_json_is_strict_a_value_that_is_not_finite_is_null_never_nan(tmp_path: Path) -> None:
    path = tmp_path / layout.SUMMARY
    write_json(path, {"a": math.nan, "b": [1.5, -math.inf], "c": {"d": math.inf, "e": "nan"}, "f": 2})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text, text
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert parsed == {"a": None, "b": [1.5, None], "c": {"d": None, "e": "nan"}, "f": 2}
