"""Shared fixtures: tests never touch the user's cache or the network."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/*.json from this run")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


def _short_variant(config: Path) -> list[str]:
    """The `--set` overrides of the short variant that a config documents in its header comment."""
    header = [line.lstrip("# ") for line in config.read_text().splitlines() if line.startswith("#")]
    (command,) = [line for line in header if line.startswith("visionbench train ")]
    words = command.split()
    assert words[2] == str(config.relative_to(ROOT)), command
    assert words[3::2] == ["--set"] * len(words[3::2]), command
    return words[4::2]


@pytest.fixture
def short_variant():
    """`short_variant(config_path)`: the config's documented short-variant overrides, as `key=value` strings."""
    return _short_variant
