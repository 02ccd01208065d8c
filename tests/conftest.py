"""Shared fixtures: tests never touch the user's cache, the network or the checkout, and run from the checkout's
root (as a user there would), wherever pytest was started and whatever the checkout's folder is called."""

from __future__ import annotations

import shlex
import shutil
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A shell without job control starts a background command (`make test &`) with SIGINT ignored, and visionbench
# rightly leaves an ignored signal ignored (as under nohup). The interrupt tests send SIGINT to this process and to
# the commands they start, so the session takes Python's own Ctrl-C handler back; the children get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _session_env(tmp_path_factory):
    """The checkout's root as the cwd (tests name configs relative to it: `configs/smoke/synthetic.yaml`), and a
    cache of the session's own for module-scoped fixtures, set up before any test's `_isolated_cache`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("session-cache")))
        yield


def _checkout_entries() -> set[str]:
    """What a test could leave in the checkout: top-level entries and runs under `runs/` (a default `out_dir`).
    Dot folders and `__pycache__` are the tools' own caches."""
    names = {p.name for p in ROOT.iterdir() if not p.name.startswith(".") and p.name != "__pycache__"}
    if (ROOT / "runs").is_dir():
        names |= {str(p.relative_to(ROOT)) for p in (ROOT / "runs").glob("*/*")}
    return names


@pytest.fixture(autouse=True)
def _checkout_untouched(request):
    before = _checkout_entries()
    yield
    added = sorted(_checkout_entries() - before)
    if added:
        pytest.fail(f"{request.node.nodeid} wrote into the checkout {ROOT}: {', '.join(added)} (use tmp_path)")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    yield
    shutil.rmtree(cache, ignore_errors=True)  # datasets simulated into the cache take up to hundreds of MB a test


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/*.json from this run")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


def _short_variant(config: Path) -> list[str]:
    """The `--set` overrides of the short variant that a config documents in its header comment."""
    header = [line.lstrip("# ") for line in config.read_text().splitlines() if line.startswith("#")]
    (command,) = [line for line in header if line.startswith("visionbench train ")]
    words = shlex.split(command)  # a value may be quoted: --set 'model.kwargs={depth: 1}'
    assert words[2] == str(config.relative_to(ROOT)), command
    assert words[3::2] == ["--set"] * len(words[3::2]), command
    return words[4::2]


@pytest.fixture
def short_variant():
    """`short_variant(config_path)`: the config's documented short-variant overrides, as `key=value` strings."""
    return _short_variant
