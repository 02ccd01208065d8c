"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A write interrupted by an exception or a kill leaves the previous version of the file intact (timm writes a temp
file then renames it; Lightning #688 is the complaint this avoids).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from visionbench.errors import UserError, first_line
from visionbench.utils.bounded import JSON_BYTES, UnreadableFile, read_bytes


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


class WriteFailed(UserError, OSError):
    """A file could not be written (a full disk, a read-only file system, a directory in the way): one line naming
    the file; the previous version of the file, if any, is intact. Also an OSError, for callers that catch those."""


class FolderGone(WriteFailed):
    """A folder held by `keep_folder` (a run directory) was deleted or moved while it was being written to."""


# Write-fault errnos that may surface from inside the body of `atomic_open` (torch.save wraps them in a
# RuntimeError): the disk, not the data. Other OSErrors there are the caller's (a network read while downloading).
_WRITE_FAULTS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO", "EACCES", "EPERM", "EISDIR", "ENOTDIR", "ENOENT")
    if hasattr(errno, name)
)
_KEPT: list[Path] = []  # folders that writes below must find in place (keep_folder), as absolute paths


@contextlib.contextmanager
def keep_folder(folder: str | os.PathLike) -> Iterator[None]:
    """Within: a write below `folder` requires `folder` itself to exist (subfolders below it are still created),
    and raises `FolderGone` otherwise. A run directory deleted mid-run is then noticed at its next write instead
    of being silently re-created without its config."""
    folder = Path(os.path.abspath(folder))
    _KEPT.append(folder)
    try:
        yield
    finally:
        _KEPT.remove(folder)


def _kept_root(path: Path) -> Path | None:
    target = Path(os.path.abspath(path))
    return next((k for k in reversed(_KEPT) if target.is_relative_to(k)), None)


def _check_kept(path: Path) -> None:
    root = _kept_root(path)
    if root is not None and not root.is_dir():
        raise FolderGone(f"{root}: the folder was deleted or moved while it was being written to; stopped")


def _make_parents(path: Path) -> None:
    """Create `path`'s missing parent folders, but never a kept folder or anything above it."""
    root = _kept_root(path)
    if root is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    _check_kept(path)
    below = [p for p in Path(os.path.abspath(path)).parents if p != root and p.is_relative_to(root)]
    for folder in reversed(below):
        try:
            folder.mkdir(exist_ok=True)
        except FileNotFoundError:  # the kept folder went away between the check and the mkdir
            _check_kept(path)
            raise


def _write_fault(exc: BaseException) -> OSError | None:
    """The OSError of a write fault in `exc` or its chain (cause, context), if there is one."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and not isinstance(exc, WriteFailed) and exc.errno in _WRITE_FAULTS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _cannot_write(path: Path, e: OSError) -> WriteFailed:
    reason = e.strerror or first_line(e)
    kept = "its previous version is intact" if path.is_file() else "nothing was written"
    return WriteFailed(f"{path}: cannot write ({reason}); {kept}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on a clean exit it is fsynced and renamed over `path`.

    Raises:
        WriteFailed: the folder cannot be created, the disk is full or read-only, a directory is in the way (the
            temp file is removed, `path` keeps its previous content).
        FolderGone: a folder held by `keep_folder` is missing.
    """
    path = Path(path)
    try:
        _make_parents(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except WriteFailed:
        raise
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the usual mode of a new file, not mkstemp's 0600
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if _KILL_AT_WRITE:
                _maybe_killed_mid_write()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        fault = _write_fault(e) if isinstance(e, Exception) else None  # never an interrupt
        if fault is not None:
            _check_kept(path)  # a folder deleted under the write: say that, not "no such file"
            raise _cannot_write(path, fault) from None
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
    """Strict JSON (RFC 8259 has no NaN or Infinity, and jq, browsers and most parsers refuse Python's): a value
    that is not finite (an undefined metric) is written as null, never as NaN."""
    write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


# JSON we read nests 4 levels (summary.json's test_details); the limit stops structures that would exhaust Python's
# stack in any recursive walker after the parse (json's C scanner itself raises RecursionError near 1,000 levels).
MAX_JSON_DEPTH = 50


def _too_deep(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest more than `limit` levels (iterative: the value may be ~1,000 deep)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(data: bytes, path: str | os.PathLike, what: str = "file") -> Any:
    """Parse UTF-8 JSON nested at most MAX_JSON_DEPTH levels; any problem is an UnreadableFile naming `path`."""
    too_deep = UnreadableFile(path, f"{what} nests more than {MAX_JSON_DEPTH} levels deep")
    try:
        value = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise too_deep from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an int of more than 4,300 digits
        raise UnreadableFile(path, f"{what} is not JSON ({first_line(e)})") from None
    if _too_deep(value, MAX_JSON_DEPTH):
        raise too_deep
    return value


def read_json(path: str | os.PathLike, max_bytes: int = JSON_BYTES, what: str = "file") -> Any:
    """A JSON file: a regular file of at most `max_bytes`, UTF-8, nested at most MAX_JSON_DEPTH levels.

    Raises:
        UnreadableFile: (a UserError) naming the file: missing, not a regular file, too large, too deep, not JSON.
    """
    return parse_json(read_bytes(path, what, max_bytes), path, what)
