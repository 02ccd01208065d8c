"""`compare`: run every cell of a config's `matrix:` (lists over dotted keys), each in its own fixed run directory
`runs/<experiment>/<cell>/`, so that running the command again is idempotent: finished cells are skipped, an
interrupted cell resumes from its last checkpoint, and only the missing cells train. A cell that ran before with
another config (an edited lr, `--set trainer.epochs=2`) is never taken for a result of the new one: it is refused,
naming the keys, or trained again when asked (`stale_cells`, `Cell.changed`).

A failed cell does not stop the others; the failures are listed at the end. With several CUDA devices (or
`--jobs N`), cells run in N worker processes, one device each.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from visionbench import layout
from visionbench.config import RunConfig, _short, config_from_raw, load_config, override_text, read_config_file
from visionbench.errors import UserError, first_line
from visionbench.utils import interrupts
from visionbench.utils.bounded import check_cells
from visionbench.utils.interrupts import Interrupted, signal_name

MATRIX = "matrix"
MAX_CELLS = 10_000  # each cell is a training run: far more than anyone trains, far less than a hang (10 keys x 100)
# How long workers get to stop after the parent's SIGTERM: a training cell finishes its step and writes a checkpoint
# (seconds for the models here on CPU); what is still running after it is SIGKILLed, its last checkpoint kept.
STOP_GRACE_SECONDS = 30.0


@dataclasses.dataclass
class Cell:
    """One combination of the matrix (or one run of a study's cell): its overrides, its validated config and its
    run directory."""

    overrides: list[str]
    cfg: RunConfig
    run_dir: Path
    changed: tuple[str, ...] = ()  # keys that differ from the run already in run_dir: train it again from scratch
    title: str | None = None  # what the log calls the cell (a study's labels); default: its overrides

    @property
    def label(self) -> str:
        return self.title if self.title is not None else " ".join(self.overrides)


@dataclasses.dataclass
class Outcome:
    cell: Cell
    status: str  # finished, skipped (finished before), failed, or a RunStopped's run_status (pruned)
    seconds: float = 0.0
    error: str | None = None


def read_matrix(path: Path, overrides: list[str] = ()) -> tuple[list[Cell], list[str]]:
    """The cells of a compare config (every one validated before anything runs) and the matrix keys, in order.

    Raises:
        UserError: no `matrix:` mapping, an empty list, a key the config does not have, a value it refuses.
    """
    raw = read_config_file(path)
    matrix = raw.pop(MATRIX, None)
    if not isinstance(matrix, dict) or not matrix:
        raise UserError(f"{path}: expected a `matrix:` mapping of dotted keys to lists, e.g. model.name: [a, b]")
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: matrix.{key}: expected a non-empty list of values, got {_short(values)}")
    check_cells([len(values) for values in matrix.values()], MAX_CELLS, f"{path}: matrix: ", "a compare may have")
    keys = list(matrix)
    base = config_from_raw(raw, list(overrides), str(path), experiment=path.stem)
    out = Path(base.trainer.out_dir) / (base.trainer.experiment or path.stem)
    cells, names = [], set()
    for combo in itertools.product(*matrix.values()):
        sets = [override_text(k, v) for k, v in zip(keys, combo, strict=True)]
        try:
            cfg = config_from_raw(raw, [*overrides, *sets], str(path), experiment=path.stem)
        except UserError as e:
            raise UserError(f"matrix cell {' '.join(sets)}: {e}") from None
        name = cell_name(sets)
        if name in names:
            raise UserError(f"{path}: matrix gives two cells the same name {name!r}; make the values distinct")
        names.add(name)
        cells.append(Cell(sets, cfg, out / name))
    return cells, keys


def cell_name(sets: list[str]) -> str:
    """The directory name of a cell: its `key=value` overrides, made safe for a file name."""
    return layout.cell_dir_name(sets)


def cell_state(cell: Cell) -> str:
    """`new`, `finished` or `resumable` (a checkpoint exists); a folder without a checkpoint is started over."""
    from visionbench.engine import rundir

    if not cell.run_dir.exists():
        return "new"
    if rundir.read_summary(cell.run_dir).get("status") == "finished":
        return "finished"
    return "resumable" if (cell.run_dir / layout.LAST).is_file() else "new"


def stale_cells(cells: list[Cell]) -> list[tuple[Cell, list[str]]]:
    """The cells whose run directory holds a run (finished, or resumable) of another config, each with the keys
    that differ (settings that do not change what a run measures do not count, rundir.RUN_SETTINGS)."""
    from visionbench.engine import rundir

    stale = []
    for cell in cells:
        if cell_state(cell) == "new":
            continue
        try:
            differ = rundir.config_changes(cell.cfg, load_config(cell.run_dir / layout.CONFIG))
        except UserError as e:
            differ = [f"its {layout.CONFIG} ({first_line(e, 120)})"]
        if differ:
            stale.append((cell, differ))
    return stale


def mark_stale(stale: list[tuple[Cell, list[str]]], rerun_changed: bool) -> None:
    """Refuse cells that ran before with another config (`stale_cells`), or mark them to be trained again from
    scratch when `rerun_changed`.

    Raises:
        UserError: the first such cell's run directory and the keys that differ, and how many more there are.
    """
    if stale and not rerun_changed:
        cell, differ = stale[0]
        more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
        raise UserError(
            f"{cell.run_dir}: ran before with another config ({', '.join(differ)} differ){more}; its results are "
            "not this config's: train such cells again with --rerun-changed (their run directories are replaced), "
            "or set another trainer.experiment"
        )
    for cell, differ in stale:
        cell.changed = tuple(differ)


def interrupted(command: str, signum: int, cells: list[Cell], again: list[str]) -> Interrupted:
    """The interrupt's line of `compare` or `study`: what is done, what resumes, and the command that continues."""
    import shlex

    states = [cell_state(c) for c in cells]
    return Interrupted(
        signum,
        f"{command} interrupted by {signal_name(signum)}: {states.count('finished')} of {len(states)} cells "
        f"finished, {states.count('resumable')} resume from a checkpoint; continue with: visionbench {command} "
        + shlex.join(map(str, again)),
    )


def run_cell(cell: Cell, after: Callable[[Path], Any] | None = None, callbacks: Sequence[Any] = ()) -> Outcome:
    """Train one cell (or resume it, or skip it when finished), then call `after(run_dir)` (the CLI draws the
    plots: the engine does not import the report layer); any error becomes a failed Outcome, a `RunStopped` from
    one of the loop `callbacks` an Outcome with its status."""
    from visionbench.engine import rundir
    from visionbench.engine.loop import RunStopped
    from visionbench.engine.train import train

    start = time.monotonic()
    try:
        state = "new" if cell.changed else cell_state(cell)
        if state != "new":
            stored = load_config(cell.run_dir / layout.CONFIG)
            differ = rundir.config_changes(cell.cfg, stored)
            if differ:
                raise UserError(
                    f"{cell.run_dir} holds a run of another config ({', '.join(differ)} differ); train it again "
                    "with --rerun-changed, move it away, or set another trainer.experiment"
                )
        if state == "finished":
            return Outcome(cell, "skipped")
        if state == "resumable":
            print(f"resuming {cell.run_dir}", flush=True)
            train(rundir.with_run_settings(stored, cell.cfg), resume_dir=cell.run_dir, callbacks=callbacks)
        else:
            if cell.run_dir.exists():  # ours: killed before its first checkpoint, or a run of another config
                shutil.rmtree(cell.run_dir)
            train(cell.cfg, run_dir=cell.run_dir, callbacks=callbacks)
        if after is not None:
            after(cell.run_dir)
        return Outcome(cell, "finished", time.monotonic() - start)
    except (KeyboardInterrupt, SystemExit, interrupts.Interrupted):
        raise
    except RunStopped as e:
        return Outcome(cell, e.run_status, time.monotonic() - start, first_line(e))
    except Exception as e:  # noqa: BLE001  (a failed cell must not stop the others)
        return Outcome(cell, "failed", time.monotonic() - start, first_line(e) or type(e).__name__)


def _worker_init(devices: multiprocessing.Queue, threads: int, parent_pid: int) -> None:
    interrupts.worker_signals(parent_pid)  # dies with the parent; SIGTERM from it stops a cell at a checkpoint
    global _parent_pid
    _parent_pid = parent_pid
    device = devices.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    import torch

    torch.set_num_threads(threads)


_parent_pid: int | None = None  # in a worker process: the compare process that started it
_stopping = False  # in a worker process: a stop signal came, run nothing more


def _run_cell_in_worker(cell: Cell, after: Callable[[Path], Any] | None) -> Outcome:
    """`run_cell` in a worker: a stop signal ends the cell `interrupted` (after its checkpoint), and the worker
    starts nothing more; with its parent gone it exits at once, there being no one to report to."""
    global _stopping
    if _stopping:
        return Outcome(cell, "interrupted", error="not started")
    try:
        with interrupts.handle_signals():
            return run_cell(cell, after)
    except interrupts.Interrupted as e:
        _stopping = True
        if os.getppid() != _parent_pid:
            interrupts.exit_fast(e.exit_code)
        atexit.register(interrupts.exit_fast, e.exit_code)  # once the parent has our outcome and lets us go
        return Outcome(cell, "interrupted", error=first_line(e))


def default_jobs() -> int:
    """One worker per CUDA device when there are several; otherwise cells run one after another."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return n if n > 1 else 1


def run_cells(
    cells: list[Cell], jobs: int, after: Callable[[Path], Any] | None = None, log: Callable[[str], Any] = print
) -> list[Outcome]:
    """Run the cells, `jobs` at a time (worker processes, one CUDA device each when there are enough); `after`
    (a module-level function, so that worker processes can receive it) runs on each trained cell's directory."""
    outcomes: list[Outcome] = []
    total = len(cells)

    def report(i: int, outcome: Outcome) -> None:
        cell = outcome.cell
        again = f"config changed ({', '.join(cell.changed)}), trained again: " if cell.changed else ""
        if outcome.status == "failed":
            log(f"[{i}/{total}] {cell.label}: {again}failed: {outcome.error}")
        elif outcome.status == "skipped":
            log(f"[{i}/{total}] {cell.label}: finished before, skipped")
        elif outcome.status == "interrupted":
            log(f"[{i}/{total}] {cell.label}: interrupted ({cell.run_dir})")
        else:
            log(f"[{i}/{total}] {cell.label}: {again}finished in {outcome.seconds:.0f} s ({cell.run_dir})")
        outcomes.append(outcome)

    if jobs <= 1:
        for i, cell in enumerate(cells, 1):
            report(i, run_cell(cell, after))
        return outcomes
    import torch

    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    devices = ctx.Queue()
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for j in range(jobs):
        devices.put(j % n_gpu if n_gpu else None)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(devices, threads, os.getpid()))
    try:
        futures = {pool.submit(_run_cell_in_worker, cell, after): k for k, cell in enumerate(cells)}
        for i, future in enumerate(as_completed(futures), 1):
            report(i, dataclasses.replace(future.result(), cell=cells[futures[future]]))
    except BaseException:  # a stop signal (or a failure of the pool itself): no worker trains on without us
        # NOTE: `_processes` is the executor's own table of its workers; it offers no public handle on them
        workers = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        interrupts.stop_processes(workers, STOP_GRACE_SECONDS)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    order = {id(c): k for k, c in enumerate(cells)}
    return sorted(outcomes, key=lambda o: order[id(o.cell)])


def failures(outcomes: list[Outcome], log: Callable[[str], Any] = print) -> int:
    """Log the failed cells, one line each, after the report; the command's exit status (1 when any failed)."""
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        log(f"{len(failed)} of {len(outcomes)} cells failed:")
        for o in failed:
            log(f"  {o.cell.label}: {o.error}")
    return 1 if failed else 0
