"""Bounded reading of input files: regular files only, a size limit per kind of file, text decoded strictly.

A broken or hostile input may cost only what its kind of file legitimately needs. A symlink to /dev/zero, a FIFO
(whose plain `open` blocks until a writer comes), a directory, or a 10 GB file where a 2 KB config is expected is
refused in one line naming the file before anything is read into memory. Readers that hand a file to another
library (numpy's memory map, Pillow) check it with `check_regular` first, and count elements with `check_count`
before they allocate what a header claims. A config that multiplies into runs (a compare matrix, a search grid) is
counted with `check_cells` before any cell is built.

Text follows the YAML 1.2 rules for every text file we read (configs, search spaces, CSV manifests, VOC lists):
UTF-8 with or without a byte-order mark, UTF-16 or UTF-32 with one, or without one when the first character is
ASCII (the spec's null-byte pattern, section 5.2); anything that does not decode strictly is refused, never guessed.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from visionbench.errors import UserError

if TYPE_CHECKING:
    import numpy as np

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Size limits per kind of file, each far above the largest legitimate one.
CONFIG_BYTES = 1 * MiB  # YAML configs, search spaces, a run's config.yaml: ours are under 10 KiB
JSON_BYTES = 64 * MiB  # summary.json, confusion matrices, meta.json: a 1000-class confusion matrix is ~5 MiB
CSV_BYTES = 4 * GiB  # CSV manifests, streamed row by row: ~40M rows of 100 bytes
LIST_BYTES = 64 * MiB  # VOC ImageSets lists: the largest official one is 70 KiB
XML_BYTES = 1 * MiB  # a VOC annotation: ~1 KiB each
ARRAY_FILE_BYTES = 4 * GiB  # one idx file (uncompressed), CIFAR batch or .npy: CIFAR-100's train batch is 155 MiB
IMAGE_FILE_BYTES = 1 * GiB  # one image file of an image folder or manifest
# a pretrained weights file (model.pretrained): 1B parameters with Adam's two moments, all float32, are 11.2 GiB;
# the largest library files: torchvision's RegNetY-128GF SWAG 2.46 GB, timm's vit_gigantic_patch14_clip 7.4 GB
WEIGHTS_FILE_BYTES = 16 * GiB
# Elements of one image in an array file (.npy, a pickled array): Pillow's decompression-bomb limit for pixels
# (Image.MAX_IMAGE_PIXELS, ~89 M, a 9459 x 9459 image). A DeepLense image is 150 x 150.
MAX_IMAGE_ELEMENTS = 89_478_485


class UnreadableFile(UserError):
    """A file refused before or while reading it. `reason` is the message without the path, for callers that name
    the file their own way (the report's `unreadable: summary.json ...`); `missing` tells a file that does not
    exist from one that cannot be read."""

    def __init__(self, path: str | os.PathLike, reason: str, missing: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.missing = Path(path), reason, missing


def size_text(n: int) -> str:
    """`1.5 GiB`-style size for messages."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_stat(path: str | os.PathLike, st: os.stat_result, what: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableFile(path, f"{what} is {_kind(st.st_mode)}, expected a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnreadableFile(
            path, f"{what} is {st.st_size:,} bytes, more than the {size_text(max_bytes)} a {what} may have"
        )


def check_regular(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> os.stat_result:
    """Stat `path` (following links) and require a regular file of at most `max_bytes`.

    Raises:
        UnreadableFile: missing, not a regular file (a directory, device, FIFO, socket) or too large.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise UnreadableFile(path, f"cannot read {what} ({e.strerror or e})", missing=_missing(e)) from None
    _check_stat(path, st, what, max_bytes)
    return st


def _missing(e: OSError) -> bool:
    return isinstance(e, FileNotFoundError)


def open_regular(path: str | os.PathLike, what: str, max_bytes: int) -> IO[bytes]:
    """Open a regular file of at most `max_bytes` for binary reading.

    O_NONBLOCK makes opening a FIFO return at once (a plain open waits for a writer), so it can be refused.

    Raises:
        UnreadableFile: missing, unreadable, not a regular file, or larger than `max_bytes`.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise UnreadableFile(path, f"cannot read {what} ({e.strerror or e})", missing=_missing(e)) from None
    try:
        _check_stat(path, os.fstat(fd), what, max_bytes)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bytes(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (a file that grows while read is refused too)."""
    with open_regular(path, what, max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise UnreadableFile(path, f"cannot read {what} ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise UnreadableFile(path, f"{what} is more than the {size_text(max_bytes)} a {what} may have")
    return data


# BOMs, longest first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def text_encoding(head: bytes) -> tuple[str, int]:
    """(codec, length of the byte-order mark) of a text stream from its first four bytes (YAML 1.2, 5.2)."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec, len(bom)
    # Without a mark the first character is ASCII, so the pattern of zero bytes tells the encoding.
    if len(head) >= 4 and head[:3] == b"\0\0\0" and head[3]:
        return "utf-32-be", 0
    if len(head) >= 4 and head[0] and head[1:4] == b"\0\0\0":
        return "utf-32-le", 0
    if len(head) >= 2 and not head[0] and head[1]:
        return "utf-16-be", 0
    if len(head) >= 2 and head[0] and not head[1]:
        return "utf-16-le", 0
    return "utf-8", 0


EXPECTED_TEXT = "expected UTF-8 text (or UTF-16/UTF-32)"


def decode_error(what: str, codec: str, e: UnicodeDecodeError) -> str:
    """The reason of a refused text file, one line."""
    return f"{what} is not valid {codec.upper()} ({e.reason} at byte offset {e.start}); {EXPECTED_TEXT}"


def decode_text(data: bytes, path: str | os.PathLike, what: str) -> str:
    """Decode a whole text file strictly (see the module docstring); the byte-order mark is dropped."""
    codec, skip = text_encoding(data[:4])
    try:
        return codecs.decode(data[skip:], codec, "strict")
    except UnicodeDecodeError as e:
        raise UnreadableFile(path, decode_error(what, codec, e)) from None


def read_text(path: str | os.PathLike, what: str, max_bytes: int) -> str:
    """A whole text file: a regular file of at most `max_bytes`, decoded strictly."""
    return decode_text(read_bytes(path, what, max_bytes), path, what)


def open_text(path: str | os.PathLike, what: str, max_bytes: int) -> IO[str]:
    """A text file streamed (CSV manifests), decoded strictly; a decode error surfaces while reading as an
    UnreadableFile giving the byte where the file stops being text."""
    f = open_regular(path, what, max_bytes)
    try:
        codec, skip = text_encoding(f.read(4))
        f.seek(skip)
        return _TextStream(f, path, what, codec, skip)
    except BaseException:
        f.close()
        raise


class _TextStream(io.TextIOWrapper):
    def __init__(self, f: IO[bytes], path: str | os.PathLike, what: str, codec: str, skip: int):
        super().__init__(f, encoding=codec, errors="strict", newline="")
        self._where = (path, what, codec, skip)

    def __next__(self) -> str:
        try:
            return super().__next__()
        except UnicodeDecodeError:
            raise UnreadableFile(self._where[0], _locate_decode_error(*self._where)) from None


def _locate_decode_error(path: str | os.PathLike, what: str, codec: str, skip: int) -> str:
    """The reason of a decode error with its byte offset in the file (a stream's error is relative to a chunk)."""
    decoder = codecs.getincrementaldecoder(codec)("strict")
    offset = skip
    with open(path, "rb") as f:  # already checked to be a regular file
        f.seek(skip)
        while True:
            chunk = f.read(1 << 20)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)  # the final call reports a character cut at the end
            except UnicodeDecodeError as e:
                e.start += offset - pending
                return decode_error(what, codec, e)
            if not chunk:
                break
            offset += len(chunk)
    return f"{what} is not valid {codec.upper()}; {EXPECTED_TEXT}"


def check_count(count: int, limit: int, path: str | os.PathLike, what: str) -> None:
    """Refuse before allocating when a header claims more than `limit` elements."""
    if count > limit:
        raise UnreadableFile(path, f"{what}: {count:,} elements claimed, more than the {limit:,} allowed")


def check_cells(sizes: Mapping[str, int] | Sequence[int], limit: int, head: str, tail: str, times: int = 1) -> int:
    """The number of combinations of axes of these `sizes` (times `times`), refused before any is built when it is
    more than `limit`: `{head}{total:,} cells (10 x 20), more than the {limit:,} {tail}`; named axes (a mapping)
    show as `10 (key)`.

    Raises:
        UserError: more than `limit` combinations.
    """
    named = isinstance(sizes, Mapping)
    total = math.prod(sizes.values() if named else sizes) * times
    if total > limit:
        counts = " x ".join(f"{n} ({key})" for key, n in sizes.items()) if named else " x ".join(map(str, sizes))
        raise UserError(f"{head}{total:,} cells ({counts}), more than the {limit:,} {tail}")
    return total


def memory_bytes() -> int | None:
    """Physical memory of this machine, None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, path: str | os.PathLike, what: str) -> None:
    """Refuse before allocating `nbytes` for a file's contents when that is more than half the machine's memory (a
    sparse file or a header can claim any size; the machine, not the file, sets what can be held)."""
    total = memory_bytes()
    if total is not None and nbytes > total // 2:
        raise UnreadableFile(
            path, f"{what} would take {size_text(nbytes)}, more than half of this machine's memory ({size_text(total)})"
        )


def elements(shape: tuple[int, ...]) -> int:
    """The element count of a shape, as a Python int (uint32 dimensions can overflow int64)."""
    return math.prod(int(d) for d in shape)


def read_npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the `.npy` file open at its start, read without touching its data (so a
    caller can count what the header claims before anything is allocated); `f` is left at the data.

    Raises:
        ValueError: not a `.npy` header, or a format version that holds no plain array (3.0 exists only for
            structured dtypes with non-latin-1 field names).
    """
    from numpy.lib import format as npy

    version = npy.read_magic(f)
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    return readers[version](f)
