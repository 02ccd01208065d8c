"""`compare`: run every cell of a config's `matrix:` (lists over dotted keys), each in its own fixed run directory
`runs/<experiment>/<cell>/`, so that running the command again is idempotent: finished cells are skipped, an
interrupted cell resumes from its last checkpoint, and only the missing cells train.

A failed cell does not stop the others; the failures are listed at the end. With several CUDA devices (or
`--jobs N`), cells run in N worker processes, one device each.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from visionbench.config import RunConfig, config_diff, config_from_raw, load_config, read_config_file
from visionbench.errors import UserError, first_line

MATRIX = "matrix"


@dataclasses.dataclass
class Cell:
    """One combination of the matrix: its overrides, its validated config and its run directory."""

    overrides: list[str]
    cfg: RunConfig
    run_dir: Path

    @property
    def label(self) -> str:
        return " ".join(self.overrides)


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
            raise UserError(f"{path}: matrix.{key}: expected a non-empty list of values, got {values!r}")
    keys = list(matrix)
    base = config_from_raw(raw, list(overrides), str(path), experiment=path.stem)
    out = Path(base.trainer.out_dir) / (base.trainer.experiment or path.stem)
    cells, names = [], set()
    for combo in itertools.product(*matrix.values()):
        sets = [f"{k}={_yaml_value(v)}" for k, v in zip(keys, combo, strict=True)]
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
    return "__".join(re.sub(r"[^A-Za-z0-9_.=+-]+", "_", s) for s in sets)[:200]


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def cell_state(cell: Cell) -> str:
    """`new`, `finished` or `resumable` (a checkpoint exists); a folder without a checkpoint is started over."""
    from visionbench.engine import rundir

    if not cell.run_dir.exists():
        return "new"
    if rundir.read_summary(cell.run_dir).get("status") == "finished":
        return "finished"
    return "resumable" if (cell.run_dir / rundir.LAST).is_file() else "new"


def run_cell(cell: Cell, after: Callable[[Path], Any] | None = None, callbacks: Sequence[Any] = ()) -> Outcome:
    """Train one cell (or resume it, or skip it when finished), then call `after(run_dir)` (the CLI draws the
    plots: the engine does not import the report layer); any error becomes a failed Outcome, a `RunStopped` from
    one of the loop `callbacks` an Outcome with its status."""
    from visionbench.engine.loop import RunStopped
    from visionbench.engine.train import train

    start = time.monotonic()
    try:
        state = cell_state(cell)
        if state == "finished":
            return Outcome(cell, "skipped")
        if state == "resumable":
            stored = load_config(cell.run_dir / "config.yaml")
            differ = config_diff(cell.cfg, stored)
            if differ:
                raise UserError(
                    f"{cell.run_dir} holds a run of another config ({', '.join(differ)} differ); move it away or "
                    "set another trainer.experiment"
                )
            print(f"resuming {cell.run_dir}", flush=True)
            train(stored, resume_dir=cell.run_dir, callbacks=callbacks)
        else:
            if cell.run_dir.exists():  # ours, killed before its first checkpoint: nothing to keep
                shutil.rmtree(cell.run_dir)
            train(cell.cfg, run_dir=cell.run_dir, callbacks=callbacks)
        if after is not None:
            after(cell.run_dir)
        return Outcome(cell, "finished", time.monotonic() - start)
    except (KeyboardInterrupt, SystemExit):
        raise
    except RunStopped as e:
        return Outcome(cell, e.run_status, time.monotonic() - start, first_line(e))
    except Exception as e:  # noqa: BLE001  (a failed cell must not stop the others)
        return Outcome(cell, "failed", time.monotonic() - start, first_line(e) or type(e).__name__)


def _worker_init(devices: multiprocessing.Queue, threads: int) -> None:
    device = devices.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    import torch

    torch.set_num_threads(threads)


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
        if outcome.status == "failed":
            log(f"[{i}/{total}] {cell.label}: failed: {outcome.error}")
        elif outcome.status == "skipped":
            log(f"[{i}/{total}] {cell.label}: finished before, skipped")
        else:
            log(f"[{i}/{total}] {cell.label}: finished in {outcome.seconds:.0f} s ({cell.run_dir})")
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
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(devices, threads)) as pool:
        futures = {pool.submit(run_cell, cell, after): k for k, cell in enumerate(cells)}
        for i, future in enumerate(as_completed(futures), 1):
            report(i, dataclasses.replace(future.result(), cell=cells[futures[future]]))
    order = {id(c): k for k, c in enumerate(cells)}
    return sorted(outcomes, key=lambda o: order[id(o.cell)])
