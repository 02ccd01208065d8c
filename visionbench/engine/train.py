"""`train(cfg)`: put data, model, task and optimisation together from a RunConfig, run `fit`, write the run.

Everything that can be wrong with the input (config, data files, model size, checkpoint) is checked before the
run directory is created or touched, so bad input never damages an existing run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from visionbench import layout
from visionbench.config import RunConfig
from visionbench.engine.assembly import Assembly, assemble
from visionbench.engine.callbacks import make_progress
from visionbench.engine.checkpoint import load_checkpoint, set_rng_state
from visionbench.engine.loop import Trainer, TrainState, fit
from visionbench.engine.recorder import Recorder, place_run_dir, tensorboard_writer_class
from visionbench.engine.runtime import CompiledForward, Process, end_distributed, start_process
from visionbench.engine.transfer import Unfreeze
from visionbench.errors import UserError, first_line


def train(
    cfg: RunConfig,
    resume_dir: Path | None = None,
    start_time: float | None = None,
    run_dir: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train `cfg` in a new run directory (`run_dir`, which must not exist yet, or a fresh timestamped one), or
    continue the run in `resume_dir`; returns the run directory. `callbacks` join the loop's own (fastai's event
    names); one that raises `RunStopped` ends the run with its `run_status` (a search's pruner)."""
    start = start_time if start_time is not None else time.monotonic()
    tcfg = cfg.trainer

    # 1. This process: its rank under torchrun, its device, threads and seeds.
    proc = start_process(cfg)

    # 2. Everything that can fail on bad input, before any file is written.
    parts = assemble(cfg, proc.device, shard=proc.shard, resumed=resume_dir is not None)
    ckpt = load_checkpoint(resume_dir / layout.LAST) if resume_dir is not None else None
    writer_class = tensorboard_writer_class() if tcfg.tensorboard else None

    # 3. The trainer and the loop's state, continued from the checkpoint on a resume.
    progress = None
    if proc.rank == 0:  # the one process that prints
        progress = make_progress(tcfg.progress, tcfg.epochs, len(parts.train_loader), parts.train_loader.batch_size)
    trainer = _trainer(cfg, parts, proc, progress, callbacks, start)
    state = _restore(trainer, ckpt, resume_dir)

    # 4. The run directory and its recorder, the loop's last callback.
    run_dir = place_run_dir(cfg, resume_dir, run_dir, proc)
    recorder = Recorder(cfg, parts, trainer, state, run_dir, proc, start)
    trainer.callbacks.append(recorder)
    recorder.open(new=ckpt is None, writer_class=writer_class)
    if progress is not None:
        resumed = f"; resuming {recorder.where()}" if ckpt is not None else ""
        progress.message(f"writing to {run_dir}{resumed}")  # the end names it again as `run directory:`
        progress.message(_start_line(cfg, parts, proc))
        if parts.transfer is not None:
            progress.message(parts.transfer.line())

    # 5. Train; the recorder writes the final and best results at the end, or the stop story.
    try:
        fit(trainer, state)
    except BaseException as e:  # noqa: BLE001  (recorded, then it propagates)
        told = recorder.stopped(e)
        if told is e:
            raise
        raise told from None
    finally:
        recorder.close()
        if progress is not None:
            progress.close()  # the bar stopped and the cursor back, however the run ended
        if proc.world > 1:
            trainer.train_model = None  # the DDP wrapper goes before its process group
            end_distributed()
    return run_dir


def _trainer(
    cfg: RunConfig, parts: Assembly, proc: Process, progress, callbacks: Sequence[Any], start: float
) -> Trainer:
    """The loop's view of the assembly, plus the forward it trains through (DDP under torchrun, compiled with
    trainer.compile), the EMA twin (trainer.ema_decay) and the callbacks: the progress display, the unfreezing at
    trainer.unfreeze_at_epoch, then the caller's `callbacks`."""
    tcfg, model, device = cfg.trainer, parts.model, proc.device
    forward = model
    if proc.world > 1:  # gradients averaged across ranks in backward; the module itself stays unwrapped for state
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ema = None
    if tcfg.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tcfg.ema_decay), use_buffers=True)
    own = [progress] if progress is not None else []
    if tcfg.unfreeze_at_epoch:
        own.append(Unfreeze(model, parts.frozen, tcfg.unfreeze_at_epoch))
    return Trainer(
        model=model,
        task=parts.task,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        scaler=parts.scaler,
        train_loader=parts.train_loader,
        eval_loaders=parts.eval_loaders,
        cfg=tcfg,
        device=device,
        ema=ema,
        train_model=CompiledForward(forward, tcfg.compile_mode, cfg.model.name) if proc.compile else forward,
        mix=parts.mix,
        callbacks=[*own, *callbacks],
        start_time=start,
        budget=parts.budget,
    )


def _restore(trainer: Trainer, ckpt: dict[str, Any] | None, resume_dir: Path | None) -> TrainState:
    """A fresh TrainState, or the checkpoint's, with the weights, optimizer and RNG states put back."""
    if ckpt is None:
        return TrainState(loss_sum=torch.zeros((), device=trainer.device))
    try:
        state = trainer.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:  # ours, but from another model or optimizer
        raise UserError(f"{resume_dir / layout.LAST}: checkpoint does not match this run ({first_line(e)})") from None
    return state


def _start_line(cfg: RunConfig, parts: Assembly, proc: Process) -> str:
    """What the run trains, on what and where, printed before the first step."""
    data = parts.data
    sizes = " / ".join(
        f"{len(split):,} {name}"
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
        if split is not None
    )
    where = f"{proc.device}" + (f" x {proc.world} processes" if proc.world > 1 else "")
    epochs, steps = cfg.trainer.epochs, parts.steps_per_epoch
    plan = f"{epochs} epoch{'s' if epochs != 1 else ''} of {steps:,} steps"
    if epochs == 0:
        plan = f"0 epochs: evaluating the model as built on {' and '.join(parts.eval_loaders)}, no training"
    return f"{cfg.model.name} ({parts.params:,} parameters) on {cfg.data.name} ({sizes} images), device {where}, {plan}"
