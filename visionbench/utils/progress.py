"""A `progress(done, total)` callback for long library calls (a simulation): it counts what this call did and
draws a rich bar on stderr when asked to (on a terminal), nothing otherwise."""

from __future__ import annotations

import time


class CountingProgress:
    """Called as `progress(done, total)` once at the start and after each step. `counted` and `seconds` start at
    the first call, so that work found already done (a resumed simulation) is not counted as done by this call."""

    def __init__(self, label: str, bar: bool):
        self.label, self.bar, self.first, self.done, self.start = label, bar, None, 0, time.perf_counter()
        self.progress, self.task_id = None, None

    @property
    def counted(self) -> int:
        return 0 if self.first is None else self.done - self.first

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, done: int, total: int) -> None:
        if self.first is None:
            self.first, self.start = done, time.perf_counter()
            if self.bar and done < total:
                self._start_bar(done, total)
        self.done = done
        if self.progress is not None:
            self.progress.update(self.task_id, completed=done)

    def _start_bar(self, done: int, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(self.label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.progress.start()
        self.task_id = self.progress.add_task(self.label, total=total, completed=done)

    def __enter__(self) -> CountingProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
