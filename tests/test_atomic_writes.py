"""utils/io.py's atomic writes under faults: a write fault is one `WriteFailed` naming the file (an OSError too),
other errors of the caller pass through untouched, and a folder held by `keep_folder` (a run directory) is never
re-created, while every other writer still gets its missing folders created."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from visionbench import layout
from visionbench.errors import UserError
from visionbench.utils.interrupts import Interrupted
from visionbench.utils.io import FolderGone, WriteFailed, atomic_open, keep_folder, write_text


def test_missing_folders_are_created_for_writes_outside_a_kept_folder(tmp_path):
    write_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"


def test_a_kept_folder_gets_its_subfolders_but_is_never_recreated(tmp_path):
    run = tmp_path / "runs" / "run-1"
    run.mkdir(parents=True)
    with keep_folder(run):
        write_text(run / "checkpoints" / "deep" / "x", "1")  # below the kept folder: created
        write_text(tmp_path / "elsewhere" / "y", "2")  # outside it: as always
        run.rename(tmp_path / "moved")
        with pytest.raises(FolderGone, match="run-1: the folder was deleted or moved"):
            write_text(run / layout.SUMMARY, "{}")
        with pytest.raises(FolderGone):
            write_text(run / "checkpoints" / "last", "z")
        assert not run.exists()
    write_text(run / layout.SUMMARY, "{}")  # the guard ends with the block
    assert (run / layout.SUMMARY).is_file()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT])
def test_a_write_fault_in_the_body_is_one_error_naming_the_file_and_leaves_the_old_version(tmp_path, code):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(WriteFailed) as caught, atomic_open(path) as f:
        f.write("new")
        try:
            raise OSError(code, os.strerror(code))
        except OSError as e:
            raise RuntimeError("a serializer wrapping the error, as torch.save does") from e
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot write ({os.strerror(code)})") and "previous version is intact" in message
    assert isinstance(caught.value, OSError) and isinstance(caught.value, UserError)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_errors_of_the_caller_and_interrupts_pass_through_unchanged(tmp_path):
    path = tmp_path / "download"
    with pytest.raises(ConnectionResetError), atomic_open(path, "wb"):
        raise ConnectionResetError(errno.ECONNRESET, "reset by peer")  # a network read while downloading
    with pytest.raises(Interrupted), atomic_open(path, "wb"):
        raise Interrupted(signal.SIGTERM)
    assert list(tmp_path.iterdir()) == [], "the temp file is removed either way"


def test_a_directory_in_the_way_is_a_write_failure(tmp_path):
    (tmp_path / "last").mkdir()
    with pytest.raises(WriteFailed, match="last: cannot write"):
        write_text(tmp_path / "last", "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteFailed, match="cannot write"):
        write_text(tmp_path / "file" / "below", "x")
