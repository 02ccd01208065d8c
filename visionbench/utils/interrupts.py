"""Stopping on SIGINT (Ctrl-C) and SIGTERM (`kill`, schedulers, containers) with a story: one line, a status,
a checkpoint where the run asks for them, and no worker process left behind.

Why our own handlers: typer turns a KeyboardInterrupt into a silent `Exit(130)` before the CLI can say anything,
and SIGTERM's default action ends the process with no unwinding at all (a run's summary.json then says `running`
forever). Here both raise `Interrupted`, a BaseException like KeyboardInterrupt (so `except Exception` in the code
never swallows it) that typer does not know and lets through to the CLI's handler.

Inside `deferred()` (the training loop) a signal is only noted: the loop calls `check()` at its consistent points
(after an optimizer step, after an epoch) and the checkpoint written there continues bit for bit. A second signal
raises at once. Signals that the process was started with ignored (nohup, our own workers' SIGINT) stay ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(BaseException):
    """A stop signal: the CLI prints the message as one line and exits with 128 + the signal number (130, 143).

    `safe` is True when it was raised at a consistent point of the training loop (`check()`), where a checkpoint
    of the state is one that a resume continues exactly.
    """

    def __init__(self, signum: int, message: str | None = None, safe: bool = False):
        self.signum, self.safe = signum, safe
        super().__init__(message or f"interrupted by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_pending: int | None = None  # a signal noted inside deferred(), not yet acted on
_deferring = 0


def _handler(signum: int, frame) -> None:
    global _pending
    if _deferring and _pending is None:
        _pending = signum
        return
    _pending = None  # acted on now: a second signal stops at once
    raise Interrupted(signum)


def check() -> None:
    """Raise the signal noted inside `deferred()`, if any (call it where the state is consistent)."""
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum, safe=True)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise `Interrupted` in the main thread (no-op in other threads, which cannot set
    handlers). The previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in STOP_SIGNALS:
        old = signal.getsignal(signum)
        if old == signal.SIG_IGN:  # started ignored (nohup, a worker whose parent decides): keep it so
            continue
        previous[signum] = signal.SIG_DFL if old is None else old  # None: a handler not set from Python
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: a stop signal is noted and raised by the next `check()` (a second one raises at once); a signal
    still pending at a normal exit is raised there, the state being consistent at the end of the block."""
    global _deferring, _pending
    with handle_signals():
        _deferring += 1
        try:
            yield
        except BaseException:
            _deferring -= 1
            _pending = None
            raise
        _deferring -= 1
        check()


@contextlib.contextmanager
def ignored() -> Iterator[None]:
    """Within: SIGINT and SIGTERM are ignored (main thread only). For the last writes of a run that is stopping
    anyway (its checkpoint, its status): another Ctrl-C there would only leave the status saying `running`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


def pending() -> int | None:
    """The signal noted inside `deferred()` and not yet raised (None when there is none)."""
    return _pending


# --- worker processes ---------------------------------------------------------------------------------------------


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` to this process when its parent dies (Linux prctl PR_SET_PDEATHSIG), so a
    worker never trains on after a SIGKILLed parent; if the parent is already gone, send it now. Elsewhere: nothing
    (the parent still stops its workers on SIGINT and SIGTERM)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1  # noqa: N806  (<linux/prctl.h>)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl: no signal would ever come
        os.kill(os.getpid(), signum)


def _exit_now(signum: int, frame) -> None:
    os._exit(128 + signum)


def exit_fast(code: int) -> None:
    """End a stopped worker process now. Its files are all written (atomically) and its streams are flushed
    here; the interpreter's own teardown of torch and the rest takes seconds on a busy machine, which would only
    delay the parent's exit."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def worker_signals(parent_pid: int) -> None:
    """A worker process's signal policy (its parent stops it with SIGTERM): SIGINT is ignored (Ctrl-C reaches the
    whole process group; the parent decides and sends SIGTERM), SIGTERM ends an idle worker at once (nothing to
    save); inside `handle_signals()` (a task) it raises `Interrupted`, and inside training it checkpoints first."""
    die_with_parent(parent_pid)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _exit_now)


def stop_processes(procs: list, grace_seconds: float) -> None:
    """SIGTERM each live process of `procs` (multiprocessing.Process), wait up to `grace_seconds` for all of them
    (a training worker checkpoints at its next step), then SIGKILL what is left. A further signal meanwhile skips
    the wait."""
    import time

    for p in procs:
        if p.is_alive():
            with contextlib.suppress(OSError, ValueError):
                p.terminate()
    deadline = time.monotonic() + grace_seconds
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    except Interrupted:
        pass
    finally:
        for p in procs:
            if p.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    p.kill()
                p.join()


def piped_status(run: Callable[[], int]) -> int:
    """`run()`'s exit status once stdout is flushed, or SIGPIPE's when the reader of stdout left: `visionbench ... |
    head` then ends quietly, as `yes | head` does."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at the interpreter's exit
        code = 128 + 13  # the status of a process ended by SIGPIPE
    return code
