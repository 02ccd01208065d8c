"""Learning-rate schedules as step -> factor functions, each with a linear warmup, driven by torch's LambdaLR.

A schedule is a pure function of the optimizer step, so resuming needs only LambdaLR's step counter.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from functools import partial

import torch

from visionbench.config import OptimConfig
from visionbench.registry import SCHEDULES


def _warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


@SCHEDULES.register("constant")
def constant(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    return _warmup(step, warmup_steps)


@SCHEDULES.register("cosine")
def cosine(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@SCHEDULES.register("one_cycle")
def one_cycle(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    """Triangular: linear up over the warmup (a quarter of training when no warmup is set), linear down."""
    warmup_steps = warmup_steps or max(1, total_steps // 4)
    if step < warmup_steps:
        return _warmup(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * (1 - progress)


@SCHEDULES.register("step")
def step_decay(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig, steps_per_epoch: int = 1) -> float:
    milestones = sorted(round(e * steps_per_epoch) for e in cfg.step_epochs)
    return _warmup(step, warmup_steps) * cfg.step_gamma ** bisect.bisect_right(milestones, step)


def schedule_fn(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The learning-rate factor at each optimizer step."""
    fn = SCHEDULES.get(cfg.schedule)
    total, warmup = steps_per_epoch * epochs, round(cfg.warmup_epochs * steps_per_epoch)
    kwargs = {"steps_per_epoch": steps_per_epoch} if cfg.schedule == "step" else {}
    return partial(fn, total_steps=total, warmup_steps=warmup, cfg=cfg, **kwargs)


class TimeBudget:
    """Training time against `trainer.time_budget_minutes`: the loop adds the seconds it spends (`used`), the
    schedule reads `progress`, the fraction of the budget spent so far."""

    RESOLUTION = 1_000_000  # virtual steps of a budgeted schedule

    def __init__(self, minutes: float, counts_eval: bool = False) -> None:
        self.seconds, self.counts_eval, self.used = minutes * 60.0, counts_eval, 0.0

    @property
    def progress(self) -> float:
        return min(1.0, self.used / self.seconds)

    @property
    def spent(self) -> bool:
        return self.used >= self.seconds


def budget_schedule_fn(cfg: OptimConfig, steps_per_epoch: int, epochs: int, budget: TimeBudget):
    """The factor of a time-budgeted run: the warmup counts real optimizer steps (its length in steps does not
    depend on the machine's speed); the schedule after it runs on the budget's progress, as if the budget were
    `TimeBudget.RESOLUTION` steps long (step milestones sit at `step_epochs / epochs` of the budget)."""
    total = TimeBudget.RESOLUTION
    main = schedule_fn(cfg.model_copy(update={"warmup_epochs": 0.0}), total // epochs, epochs)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        return _warmup(step, warmup) * main(round(budget.progress * (total // epochs) * epochs))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    steps_per_epoch: int,
    epochs: int,
    budget: TimeBudget | None = None,
):
    if budget is not None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, budget_schedule_fn(cfg, steps_per_epoch, epochs, budget))
    fn = schedule_fn(cfg, steps_per_epoch, epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
