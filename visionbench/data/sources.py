"""Where a dataset's files come from: the folders searched, the official download, safe unpacking.

`locate_or_download` is the one lookup of every downloadable dataset (CIFAR, MNIST-like, Pascal VOC): look in the
searched folders; else, when data.download allows, fetch into the cache; else raise a one-line UserError saying
what to put where and why nothing was downloaded. Each dataset module keeps its own `find` (its layout) and `fetch`
(its archives). Modules call `sources.download` through this module, never a copy imported by name, so that a test
replaces the network for every dataset in one place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from visionbench.errors import UserError
from visionbench.utils.io import atomic_open

log = logging.getLogger(__name__)

SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}
# Short, so that a machine without network fails in seconds instead of hanging (MNIST fetches four files).
DOWNLOAD_TIMEOUT_SECONDS = 10.0

Found = TypeVar("Found")


class NotProvided(Exception):
    """Raised by a `fetch` whose download cannot or did not provide the files; the message is the reason shown."""


def locate_or_download(
    find: Callable[[], Found | None],
    fetch: Callable[[], Found],
    allow_download: bool,
    searched: Sequence[Path],
    source: str,
    wanted: Callable[[], str],
) -> Found:
    """Look here, else download, else explain.

    Args:
        find: the dataset's files as the caller uses them (a folder, {name: path}), or None when no searched folder
            holds them all.
        fetch: download into the cache and return what `find` would; raises NotProvided(reason) when the official
            source cannot provide the files, OSError (network) or UserError (md5, archive) when the download fails.
        allow_download: data.download.
        searched: the folders `find` looks in, named in the error.
        source: the download as its failure names it: "of <archive url>" or "from <base url>".
        wanted: the error's start, up to the folders: which files to put there. Called only when nothing is found
            (VOC's names the first VOC folder seen).

    Returns:
        What `find` or `fetch` returned.

    Raises:
        UserError: "<wanted> in one of: <searched> (<why nothing was downloaded>)", one line.
    """
    found = find()
    if found is not None:
        return found
    reason = "downloading is off (download=False)"
    if allow_download:
        try:
            return fetch()
        except NotProvided as exc:
            reason = str(exc)
        except (OSError, UserError) as exc:  # URLError and timeouts are OSErrors; bad md5 or archive are UserErrors
            reason = f"download {source} failed: {' '.join(str(exc).split())}"
    raise UserError(f"{wanted()} in one of: {', '.join(map(str, searched))} ({reason})")


def search_dirs(name: str, root: str | os.PathLike | None) -> list[Path]:
    """Folders searched for a dataset's files, in order: data.root, $VISIONBENCH_DATA, the cache, system dirs.

    Each base folder is tried as given and with the dataset's name appended (`$VISIONBENCH_DATA/fashion-mnist`).
    """
    bases = [Path(root).expanduser()] if root else []
    if os.environ.get("VISIONBENCH_DATA"):
        bases.append(Path(os.environ["VISIONBENCH_DATA"]).expanduser())
    bases.append(cache_dir())
    dirs: list[Path] = []
    for base in bases:
        dirs += [base, base / name]
    dirs += SYSTEM_DIRS.get(name, [])
    return list(dict.fromkeys(dirs))


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visionbench"


def download(url: str, dest: Path, md5: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_SECONDS) -> Path:
    """Fetch `url` to `dest` atomically, checking the md5 when given. Network errors raise OSError."""
    log.info("downloading %s -> %s", url, dest)
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(dest, "wb") as f:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
        if md5 and digest.hexdigest() != md5:
            raise UserError(f"{url}: downloaded file has md5 {digest.hexdigest()}, expected {md5}")
    return dest


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a (compressed) tar archive into `dest`, refusing any member that could escape it.

    Every member is checked before anything is written: an absolute name, a `..` component, a link (symbolic or
    hard), a device or fifo, or a path that resolves outside `dest` raises, because a tarball downloaded from the
    internet is foreign input (CVE-2007-4559). The extraction then runs under tarfile's "data" filter as a second
    line of defence.

    Args:
        archive: a tar file, plain or compressed (gzip, bzip2, xz).
        dest: the folder to extract into, created when missing.

    Raises:
        UserError: the archive is unreadable or a member was refused; it names the archive and the member.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_member(member, root)
                if reason:
                    raise UserError(f"{archive}: refused to extract member {member.name!r}: {reason}")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tar.extractall(root, members=members, filter="data")
            else:  # pragma: no cover - every member was already checked above
                tar.extractall(root, members=members)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        detail = " ".join(str(exc).split())  # tarfile's ReadError spans several lines; a UserError is one
        if isinstance(exc, getattr(tarfile, "FilterError", ())):  # the "data" filter exists from 3.11.4 on
            raise UserError(f"{archive}: refused to extract: {detail}") from None
        raise UserError(f"{archive}: cannot extract ({detail}); expected a tar archive") from None


def _unsafe_member(member: tarfile.TarInfo, root: Path) -> str | None:
    """Why a tar member must not be extracted under `root`, or None when it is a plain file or folder inside it."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or Path(name).is_absolute():
        return "absolute path"
    if ".." in name.split("/"):
        return "path contains '..'"
    if member.issym() or member.islnk():
        return f"is a link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder (device, fifo or other special member)"
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        return f"would land outside {root}"
    return None
