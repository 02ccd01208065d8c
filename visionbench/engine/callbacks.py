"""Progress reporting: a rich bar only when stdout is a terminal, one plain line per epoch otherwise
(Lightning #6647: progress bars flooding log files). Both show training throughput in images per second; the bar
also shows the running mean loss of the epoch."""

from __future__ import annotations

import sys
import time
from typing import Any

from visionbench.engine.loop import TrainState


def format_row(row: dict[str, Any], epochs: int, images_per_second: float | None = None) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"step {row['step']}"]
    if "lr" in row:  # not in the row of a run of 0 epochs, which only evaluates
        parts.append(f"lr {row['lr']:.3g}")
    parts += [f"{k} {v:.4f}" for k, v in row.items() if "/" in k and isinstance(v, float)]
    if images_per_second:
        parts.append(f"{images_per_second:,.0f} img/s")
    parts.append(f"{row['elapsed_seconds']:.1f}s")
    return "  ".join(parts)


class ProgressLines:
    """One line per epoch on stdout, with the epoch's training throughput.

    The throughput is the images trained this epoch over the loop's own training seconds (`state.seconds`, which
    it measures after a device sync on CUDA), so it costs nothing per batch but an integer assignment.
    """

    def __init__(self, epochs: int, images_per_batch: int = 0, stream=None):
        self.epochs, self.images_per_batch, self.stream = epochs, images_per_batch, stream or sys.stdout
        self._batch0 = self._batch = 0
        self._train_seconds0 = 0.0

    def message(self, text: str) -> None:
        """A line of its own (the run's start lines)."""
        print(text, file=self.stream, flush=True)

    def before_epoch(self, state: TrainState) -> None:
        self._batch0 = self._batch = state.batch
        self._train_seconds0 = state.seconds["train"]

    def after_batch(self, state: TrainState) -> None:
        self._batch = state.batch

    def epoch_rate(self, state: TrainState) -> float | None:
        seconds = state.seconds["train"] - self._train_seconds0
        images = (self._batch - self._batch0) * self.images_per_batch
        return images / seconds if seconds > 0 and images else None

    def after_epoch(self, state: TrainState) -> None:
        self.message(format_row(state.rows[-1], self.epochs, self.epoch_rate(state)))

    def close(self) -> None:
        """Called however the run ends (finished, failed, interrupted)."""


class ProgressBar(ProgressLines):
    """A rich progress bar over the batches of each epoch (running loss, images/s), plus the epoch line above it.

    The bar redraws at most 10 times a second; only then is the running loss read from the device, so on CUDA
    that is at most 10 syncs a second, not one per step.
    """

    def __init__(self, epochs: int, batches_per_epoch: int, images_per_batch: int = 0):
        super().__init__(epochs, images_per_batch)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.batches = batches_per_epoch
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False),
            TimeRemainingColumn(),
            transient=True,
        )
        self.task_id = None
        self._last = 0.0
        self._t0 = 0.0

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def before_fit(self, state: TrainState) -> None:
        self.progress.start()

    def before_epoch(self, state: TrainState) -> None:
        super().before_epoch(state)
        self._t0 = time.monotonic()
        self.task_id = self.progress.add_task(f"epoch {state.epoch + 1}/{self.epochs}", total=self.batches, stats="")
        self.progress.update(self.task_id, completed=state.batch)

    def after_batch(self, state: TrainState) -> None:
        self._batch = state.batch
        now = time.monotonic()
        if now - self._last > 0.1:  # redraw at most 10×/s; the bar must not slow the loop
            done = state.batch - self._batch0
            loss = float(state.loss_sum) / max(1, state.batch)  # the only device read of the bar
            rate = done * self.images_per_batch / max(time.monotonic() - self._t0, 1e-9)
            stats = f"loss {loss:.4f}  {rate:,.0f} img/s" if self.images_per_batch else f"loss {loss:.4f}"
            self.progress.update(self.task_id, completed=state.batch, stats=stats)
            self._last = now

    def after_epoch(self, state: TrainState) -> None:
        if self.task_id is not None:  # None after a run of 0 epochs' evaluation, which has no bar
            self.progress.remove_task(self.task_id)
        self.task_id = None
        super().after_epoch(state)

    def after_fit(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display: the bar goes (transient) and the cursor comes back, also after a failure or an
        interrupt, which never reach `after_fit`."""
        self.progress.stop()


def make_progress(mode: str, epochs: int, batches_per_epoch: int, images_per_batch: int = 0) -> ProgressLines:
    bar = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
    if bar:
        return ProgressBar(epochs, batches_per_epoch, images_per_batch)
    return ProgressLines(epochs, images_per_batch)
