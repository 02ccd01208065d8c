"""Dataset tests: the cache points at tmp_path, $VISIONBENCH_DATA is cleared, and any real download fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionbench.data import sources


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("VISIONBENCH_DATA", raising=False)

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(sources, "download", no_network)
    return tmp_path
