"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A write interrupted by an exception or a kill leaves the previous version of the file intact (timm writes a temp
file then renames it; Lightning #688 is the complaint this avoids).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from visionbench.errors import UserError, first_line


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
# Fault injection for the reliability harness (benchmarks/fault_injection.py): VISIONBENCH_FAULT_KILL_WRITE=N makes
# the N-th atomic write of this process SIGKILL the process after the data is in the temp file, before the rename.
_KILL_AT_WRITE = int(os.environ.get("VISIONBENCH_FAULT_KILL_WRITE", "0") or 0)
_writes = 0


def _maybe_killed_mid_write() -> None:
    global _writes
    _writes += 1
    if _writes == _KILL_AT_WRITE:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on a clean exit it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the usual mode of a new file, not mkstemp's 0600
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if _KILL_AT_WRITE:
                _maybe_killed_mid_write()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file written by `write_json`; a file that is not JSON is a UserError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read JSON ({first_line(e)})") from None
