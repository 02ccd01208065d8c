"""Progress reporting: a rich bar only when stdout is a terminal, one plain line per epoch otherwise
(Lightning #6647: progress bars flooding log files)."""

from __future__ import annotations

import sys
import time
from typing import Any

from visionbench.engine.loop import TrainState


def format_row(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"step {row['step']}", f"lr {row['lr']:.3g}"]
    parts += [f"{k} {v:.4f}" for k, v in row.items() if "/" in k and isinstance(v, float)]
    parts.append(f"{row['elapsed_seconds']:.1f}s")
    return "  ".join(parts)


class ProgressLines:
    """One line per epoch on stdout."""

    def __init__(self, epochs: int, stream=None):
        self.epochs, self.stream = epochs, stream or sys.stdout

    def after_epoch(self, state: TrainState) -> None:
        print(format_row(state.rows[-1], self.epochs), file=self.stream, flush=True)


class ProgressBar(ProgressLines):
    """A rich progress bar over the batches of each epoch, plus the epoch line above it."""

    def __init__(self, epochs: int, batches_per_epoch: int):
        super().__init__(epochs)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.batches = batches_per_epoch
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self.task_id = None
        self._last = 0.0

    def before_fit(self, state: TrainState) -> None:
        self.progress.start()

    def before_epoch(self, state: TrainState) -> None:
        self.task_id = self.progress.add_task(f"epoch {state.epoch + 1}/{self.epochs}", total=self.batches)
        self.progress.update(self.task_id, completed=state.batch)

    def after_batch(self, state: TrainState) -> None:
        now = time.monotonic()
        if now - self._last > 0.1:  # redraw at most 10×/s; the bar must not slow the loop
            self.progress.update(self.task_id, completed=state.batch)
            self._last = now

    def after_epoch(self, state: TrainState) -> None:
        self.progress.remove_task(self.task_id)
        self.progress.console.print(format_row(state.rows[-1], self.epochs))

    def after_fit(self, state: TrainState) -> None:
        self.progress.stop()


def make_progress(mode: str, epochs: int, batches_per_epoch: int) -> ProgressLines:
    bar = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
    return ProgressBar(epochs, batches_per_epoch) if bar else ProgressLines(epochs)
