"""The training loop: `fit()` calls `train_one_epoch()` and `evaluate()` (torchvision's reference names).

Everything a resume needs lives in `TrainState` plus the module/optimizer states, so a checkpoint taken at any
optimizer step (mid-epoch included) continues bit for bit on CPU in deterministic mode. Callbacks are the one way to
extend `fit`: they implement the events they need and receive the state explicitly. The events, in order:

- `before_fit`, `before_epoch`, `after_batch` (after each optimizer step), `after_epoch`, `after_fit`: fastai's;
- `after_validate`: the epoch's row (training loss and metrics, this epoch's evaluations) is `state.rows[-1]`;
- `checkpoint`: the loop stands where the config's cadence (trainer.checkpoint_every_*) wants the state kept, and the
  state is consistent (the losses read, the ranks' mean loss taken): a checkpoint written now resumes exactly.

A run of `trainer.epochs: 0` trains nothing: `fit` evaluates the model as built (Lightning's `validate`/`test`) into
an epoch-0 row with no training columns (no lr, no train/...), then emits `after_validate`, `checkpoint` and
`after_epoch` as an epoch's end does (no `before_epoch`, no `after_batch`), so its run directory is a trained run's.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from visionbench import layout
from visionbench.config import TrainerConfig
from visionbench.data.loader import DeviceLoader
from visionbench.engine.meter import TrainMeter
from visionbench.engine.runtime import autocast, distributed, gather_rows, mean_across_ranks
from visionbench.engine.schedule import TimeBudget
from visionbench.errors import UserError
from visionbench.tasks.base import Task
from visionbench.utils import interrupts

budget_clock: Callable[[], float] = time.monotonic  # the time budget's clock (tests put a fake one here)


class TrainingDiverged(UserError):
    """A non-finite loss (or weights): the run stops at once, its checkpoints stay as they were. Exit status 1: not
    the input's fault."""

    exit_code = 1


class RunStopped(Exception):
    """Raised by a callback to end a run early on purpose (a search pruning a bad trial): the run directory records
    `run_status` instead of `failed`, and the last checkpoint stays."""

    run_status = "stopped"


@dataclasses.dataclass
class TrainState:
    """Loop position and bookkeeping; saved in every checkpoint."""

    epoch: int = 0  # the epoch being trained (0-based); == epochs when done
    batch: int = 0  # next batch index within the epoch
    step: int = 0  # optimizer steps so far
    loss_sum: float | torch.Tensor = 0.0  # sum of batch losses so far this epoch (a device tensor while training)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # metrics.csv rows
    best_value: float | None = None
    best_epoch: int | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=lambda: {"train": 0.0, "eval": 0.0})
    elapsed_offset: float = 0.0  # elapsed seconds before this process (resume)
    budget_seconds: float = 0.0  # seconds counted against trainer.time_budget_minutes so far
    should_stop: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss_sum"] = torch.as_tensor(self.loss_sum).detach().cpu()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """One optimizer step as training takes it, shared by `train_one_epoch` and lr-find's sweep: `backward` for each
    micro-batch (mixup/cutmix, forward and loss under autocast, the backward pass of its 1 / accumulate_steps share),
    then `update` (clipping, the scaled optimizer step, cleared gradients)."""

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    cfg: TrainerConfig
    device: torch.device
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # compiled or DDP; else the model itself

    def backward(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        check: Callable[[torch.Tensor], None] | None = None,
        record: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """The micro-batch's loss, after its backward pass; `check(loss)` runs between the two, `record(logits,
        targets)` after the forward (the training metrics)."""
        if self.mix is not None:
            images, targets = self.mix(images, targets)  # targets become (B, C) probabilities
        with autocast(self.device, self.cfg.precision, self.cfg.cpu_precision):
            logits = (self.forward or self.model)(images)
            loss = self.task.loss(logits, targets)
        if record is not None:
            record(logits, targets)
        if check is not None:
            check(loss)
        self.scaler.scale(loss / self.cfg.accumulate_steps).backward()
        return loss

    def update(self) -> None:
        if self.cfg.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


@dataclasses.dataclass
class Trainer:
    """What the loop drives: the model (and its compiled/EMA twins), the optimisation state and the data."""

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: DeviceLoader
    eval_loaders: dict[str, DeviceLoader]  # split name -> loader, evaluated each epoch
    cfg: TrainerConfig
    device: torch.device
    ema: torch.optim.swa_utils.AveragedModel | None = None
    train_model: Callable[[torch.Tensor], torch.Tensor] | None = None  # the compiled forward (trainer.compile)
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None  # mixup/cutmix
    # objects with any of the events of the module docstring, each a method taking the TrainState
    callbacks: list[Any] = dataclasses.field(default_factory=list)
    start_time: float = dataclasses.field(default_factory=time.monotonic)
    budget: TimeBudget | None = None  # trainer.time_budget_minutes: the schedule reads it, the loop fills it
    clock: Callable[[], float] = dataclasses.field(default_factory=lambda: budget_clock)  # of the time budget
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)  # last eval
    # the task's training metrics (train/<metric>); none under mixup/cutmix, whose images carry two labels each
    meter: TrainMeter | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.mix is None:
            self.meter = TrainMeter(self.task, self.device)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def train_step(self) -> TrainStep:
        return TrainStep(
            self.model, self.task, self.optimizer, self.scaler, self.cfg, self.device, self.mix, self.train_model
        )

    def state_dict(self, state: TrainState) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "train_state": state.to_dict(),
            "train_metrics": self.meter.state_dict() if self.meter is not None else None,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> TrainState:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if self.meter is not None and ckpt.get("train_metrics") is not None:  # none in checkpoints before them
            self.meter.load_state_dict(ckpt["train_metrics"])
        state = TrainState.from_dict(ckpt["train_state"])
        state.loss_sum = torch.as_tensor(state.loss_sum).to(self.device)
        return state

    def _emit(self, event: str, state: TrainState) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(state)


def fit(trainer: Trainer, state: TrainState | None = None) -> TrainState:
    """Train from `state` (a fresh one, or one restored from a checkpoint) to `cfg.epochs`.

    A stop signal during the epochs is acted on between two steps, where the state checkpoints consistently
    (`interrupts.check`); under torchrun the ranks could not agree on that step, so there it stops at once, as it
    does during `after_fit` (the end's evaluations and writes: nothing is left to checkpoint there).
    """
    state = state or TrainState()
    cfg = trainer.cfg
    # 0 epochs: no step to stop between, nothing to keep before the end, so a stop signal acts at once
    with contextlib.nullcontext() if distributed() or cfg.epochs == 0 else interrupts.deferred():
        trainer._emit("before_fit", state)
        if cfg.epochs == 0 and not state.rows:  # a resumed one holds its row: after_fit alone evaluates again
            _evaluate_only(trainer, state)
        while state.epoch < cfg.epochs and not state.should_stop:
            trainer._emit("before_epoch", state)
            t0 = _clock(trainer.device)
            train = train_one_epoch(trainer, state)
            t1 = _clock(trainer.device)
            tick = trainer.clock()  # the time budget's clock
            state.seconds["train"] += t1 - t0
            _end_epoch(trainer, state, train, t1)
            trainer._emit("after_validate", state)  # the run directory's metrics, best weights, summary
            if trainer.budget is not None and trainer.budget.counts_eval:  # evaluation and the epoch-end writes
                state.budget_seconds += trainer.clock() - tick
                trainer.budget.used = state.budget_seconds
                state.should_stop = state.should_stop or trainer.budget.spent
            if _epoch_checkpoint_due(cfg, state):
                trainer._emit("checkpoint", state)
            trainer._emit("after_epoch", state)
            interrupts.check()  # a stop signal during the epoch's end: the state is the epoch checkpoint's
    trainer._emit("after_fit", state)
    return state


def _evaluate_only(trainer: Trainer, state: TrainState) -> None:
    """trainer.epochs 0: the model as built evaluated on its val and test splits, as the row of epoch 0, then the
    events of an epoch's end (the checkpoint holds the row: a resume has nothing left but the end's evaluation)."""
    row = {"epoch": 0, "step": state.step, "elapsed_seconds": 0.0, layout.WALL_TIME: 0.0}
    _validate(trainer, state, row, last=True, t_start=_clock(trainer.device))
    trainer._emit("after_validate", state)
    if _epoch_checkpoint_due(trainer.cfg, state):
        trainer._emit("checkpoint", state)
    trainer._emit("after_epoch", state)


def _end_epoch(trainer: Trainer, state: TrainState, train: dict[str, float], t_start: float) -> None:
    """Close the epoch: evaluate the splits due (every split on the last epoch, the test split only then unless
    trainer.eval_test_every_epoch), append its metrics.csv row (`train`: the epoch's training loss and metrics)
    and move the state to the next epoch."""
    cfg = trainer.cfg
    row: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "step": state.step,
        "elapsed_seconds": 0.0,
        layout.WALL_TIME: 0.0,
        "lr": trainer.optimizer.param_groups[0]["lr"],
        **{f"train/{k}": v for k, v in train.items()},
    }
    last = state.epoch + 1 == cfg.epochs or state.should_stop  # the budget ends a run mid-epoch
    _validate(trainer, state, row, last, t_start, due=(state.epoch + 1) % cfg.eval_every_epochs == 0)
    state.epoch += 1
    state.batch = 0
    state.loss_sum = torch.zeros((), device=trainer.device)


def _validate(
    trainer: Trainer, state: TrainState, row: dict[str, Any], last: bool, t_start: float, due: bool = True
) -> None:
    """Evaluate the splits into `row` when `due` or `last` (the test split only on the `last` row, unless
    trainer.eval_test_every_epoch) and append it to the metrics rows. A metric undefined on a split (NaN: one class
    present, constant targets) is left out of the row: an empty metrics.csv cell, no key in summary.json."""
    cfg = trainer.cfg
    if due or last:
        for split, loader in trainer.eval_loaders.items():
            if split == "test" and not (cfg.eval_test_every_epoch or last):
                continue
            metrics, *trainer.outputs[split] = evaluate(trainer.eval_model, loader, trainer.task, trainer.device, cfg)
            row.update({f"{split}/{k}": v for k, v in metrics.items() if math.isfinite(v)})
    state.seconds["eval"] += _clock(trainer.device) - t_start
    row["elapsed_seconds"] = round(state.elapsed_offset + time.monotonic() - trainer.start_time, 3)
    # stamped with the row, which the checkpoints keep: a resumed run's earlier rows keep their own times
    row[layout.WALL_TIME] = round(time.time(), 3)
    state.rows.append(row)


def train_one_epoch(trainer: Trainer, state: TrainState) -> dict[str, float]:
    """Train from `state.batch` to the end of `state.epoch`; returns the epoch's training metrics: `loss` (the mean
    training loss) and the task's `train_metrics` over the batches as they passed (engine/meter.py)."""
    cfg, loader, step, meter = trainer.cfg, trainer.train_loader, trainer.train_step(), trainer.meter
    n_batches = len(loader)
    trainer.model.train()
    loss_sum = torch.as_tensor(state.loss_sum, device=trainer.device, dtype=torch.float32).clone()
    last_ckpt = time.monotonic()
    budget, tick = trainer.budget, trainer.clock()
    if budget is not None:
        budget.used = state.budget_seconds
    watch = LossWatch(trainer.device)
    check = functools.partial(watch.add, state=state)  # CPU: raises before a non-finite gradient reaches the weights
    for images, targets in loader.epoch(state.epoch, state.batch):
        loss = step.backward(images, targets, check, meter.add if meter is not None else None)
        loss_sum += loss.detach().float()
        state.batch += 1
        if state.batch % cfg.accumulate_steps and state.batch != n_batches:
            continue  # keep accumulating micro-batches
        step.update()
        if budget is not None:  # before the scheduler steps: it reads the budget's progress
            now = trainer.clock()
            state.budget_seconds += now - tick
            budget.used, tick = state.budget_seconds, now
        trainer.scheduler.step()
        state.step += 1
        if trainer.ema is not None:
            trainer.ema.update_parameters(trainer.model)
        state.loss_sum = loss_sum
        trainer._emit("after_batch", state)
        if budget is not None and budget.spent:
            state.should_stop = True  # fit evaluates this partial epoch as the last one
            break
        if state.batch < n_batches and _checkpoint_due(cfg, state, last_ckpt):
            # under DDP every rank gets here at the same step; the checkpoint keeps the ranks' mean loss so far
            watch.flush()
            state.loss_sum = loss_sum = mean_across_ranks(loss_sum)
            _check_finite(loss_sum, state)
            if meter is not None:
                meter.gather()
            trainer._emit("checkpoint", state)
            last_ckpt = time.monotonic()
        if state.batch < n_batches:
            interrupts.check()  # a stop signal: act on it here, between two steps (the epoch's end has its own)
    watch.flush()
    loss_sum = mean_across_ranks(loss_sum)
    _check_finite(loss_sum, state)
    return {"loss": loss_sum.item() / max(1, state.batch), **(meter.compute() if meter is not None else {})}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DeviceLoader, task: Task, device: torch.device, cfg: TrainerConfig
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Metrics of `model` on a whole split; returns (metrics, logits, targets). `cfg.tta='flip'` averages the
    logits of each image and its mirror."""
    was_training = model.training
    model.eval()
    metrics = task.metrics().to(device)
    all_logits, all_targets = [], []
    for images, targets in loader:
        with autocast(device, cfg.precision, cfg.cpu_precision):
            logits = model(images).float()
            if cfg.tta == "flip":
                logits = (logits + model(images.flip(-1)).float()) / 2
        metrics.update(logits, targets)
        all_logits.append(logits)
        all_targets.append(targets)
    model.train(was_training)
    values = {k: round(float(v), 6) for k, v in metrics.compute().items()}  # torchmetrics syncs across ranks
    return values, gather_rows(torch.cat(all_logits)), gather_rows(torch.cat(all_targets))


def _epoch_checkpoint_due(cfg: TrainerConfig, state: TrainState) -> bool:
    every = cfg.checkpoint_every_epochs
    return state.epoch >= cfg.epochs or state.should_stop or (every is not None and state.epoch % every == 0)


def _checkpoint_due(cfg: TrainerConfig, state: TrainState, last_ckpt: float) -> bool:
    if cfg.checkpoint_every_steps is not None and state.step % cfg.checkpoint_every_steps == 0:
        return True
    if distributed():  # every rank must agree without a collective: steps only, not each rank's clock
        return False
    minutes = cfg.checkpoint_every_minutes
    return minutes is not None and time.monotonic() - last_ckpt >= minutes * 60


def _diverged(value: float, epoch: int, step: int, batch: int) -> TrainingDiverged:
    return TrainingDiverged(f"non-finite training loss ({value}) at step {step} (epoch {epoch}, batch {batch})")


def _check_finite(loss_sum: torch.Tensor, state: TrainState) -> None:
    """The collective check (every rank sees the same mean): at checkpoints and epoch ends, and the only one under
    DDP, where a rank stopping on its own loss would leave the others waiting in the next all-reduce."""
    value = float(loss_sum)
    if not math.isfinite(value):
        raise _diverged(value, state.epoch + 1, state.step, state.batch)


class LossWatch:
    """Stops a run at its first non-finite loss without a device sync per step.

    On CPU the loss is read at once: the step has already run (CPU ops are synchronous), so `.item()` costs a
    microsecond, and the run stops before the bad gradient reaches the weights. On CUDA each step's loss is copied
    without blocking into pinned host memory and read once its event has passed: usually a step later, never more
    than `lag` steps later (then it waits for the oldest), so the GPU queue is never drained for it. The error names
    the step of the first non-finite loss either way; a checkpoint flushes the watch first (`flush`), so no
    checkpoint is ever taken after a non-finite loss. Under DDP it stays off (see `_check_finite`).
    """

    lag = 4

    def __init__(self, device: torch.device):
        self.off = distributed()
        self.lazy = device.type == "cuda" and not self.off
        self.pending: collections.deque = collections.deque()
        if self.lazy:
            self.slots = torch.empty(self.lag + 1, dtype=torch.float32, pin_memory=True)
            self.next_slot = 0

    def add(self, loss: torch.Tensor, state: TrainState) -> None:
        if self.off:
            return
        where = (state.epoch + 1, state.step + 1, state.batch + 1)  # the step, and micro-batch, being computed
        if not self.lazy:
            value = loss.item()
            if not math.isfinite(value):
                raise _diverged(value, *where)
            return
        slot = self.slots[self.next_slot : self.next_slot + 1]
        self.next_slot = (self.next_slot + 1) % len(self.slots)
        slot.copy_(loss.detach().float().reshape(1), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((slot, event, where))
        while self.pending and (len(self.pending) > self.lag or self.pending[0][1].query()):
            self._read_oldest()

    def flush(self) -> None:
        while self.pending:
            self._read_oldest()

    def _read_oldest(self) -> None:
        slot, event, where = self.pending.popleft()
        event.synchronize()
        value = float(slot[0])
        if not math.isfinite(value):
            self.pending.clear()
            raise _diverged(value, *where)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic()
