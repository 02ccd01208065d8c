"""`train(cfg)`: put data, model, task and optimisation together from a RunConfig, run `fit`, write the run.

Everything that can be wrong with the input (config, data files, model size, checkpoint) is checked before the
run directory is created or touched, so bad input never damages an existing run.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import gc
import io
import math
import shlex
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from visionbench import layout
from visionbench.config import RunConfig
from visionbench.data import Datasets, augment_placement, build_datasets, build_loader
from visionbench.data.transforms import normalize
from visionbench.engine import rundir
from visionbench.engine.assembly import build_mix, build_model, check_budget, eval_loader, prepare_transfer
from visionbench.engine.callbacks import make_progress
from visionbench.engine.checkpoint import (
    first_non_finite,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
)
from visionbench.engine.loop import RunStopped, Trainer, TrainingDiverged, TrainState, evaluate, fit
from visionbench.engine.optim import build_optimizer
from visionbench.engine.runtime import (
    CompiledForward,
    PeerFailed,
    gpu_settings_for,
    init_distributed,
    peak_memory_bytes,
    peak_rss_bytes,
    resolve_device,
    seed_everything,
)
from visionbench.engine.schedule import TimeBudget, build_scheduler
from visionbench.engine.transfer import Unfreeze
from visionbench.errors import UserError, first_line
from visionbench.tasks import build_task
from visionbench.utils import interrupts
from visionbench.utils.interrupts import Interrupted, signal_name
from visionbench.utils.io import FolderGone, WriteFailed, keep_folder, write_json, write_text


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
    rank, world = init_distributed(tcfg.device)  # (0, 1) unless started by torchrun
    main_rank = rank == 0  # the one process that writes files and prints
    if world > 1 and tcfg.time_budget_minutes is not None:
        raise UserError("trainer.time_budget_minutes: not supported under torchrun yet (the ranks' clocks differ)")
    device = resolve_device(tcfg.device)
    source = f"experiment {tcfg.experiment or cfg.model.name!r}"
    use_compile = gpu_settings_for(device, tcfg.expect_cuda, tcfg.compile, source)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    seed_everything(tcfg.seed, tcfg.deterministic)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # 1. Everything that can fail on bad input, before any file is written.
    t_data = time.monotonic()
    data = build_datasets(cfg.data)
    task = build_task(cfg.task, data.info)
    task.fit_targets(data.train.targets)
    model, params, flops = build_model(cfg, data)
    check_budget(cfg, params)
    mix = build_mix(cfg, task, data.info)
    head, frozen = prepare_transfer(cfg, model, resumed=resume_dir is not None)
    ckpt = load_checkpoint(resume_dir / layout.LAST) if resume_dir is not None else None
    summary_writer = tensorboard_writer_class() if tcfg.tensorboard else None

    # 2. Data onto the device, model, optimisation.
    channels_last = tcfg.channels_last
    shard = (rank, world)
    train_loader = build_loader(data, "train", cfg.data, tcfg.batch_size, device, True, tcfg.seed, channels_last, shard)
    eval_loaders = {
        s: eval_loader(data, s, cfg, device, shard) for s in ("val", "test") if getattr(data, s) is not None
    }
    seconds_data = time.monotonic() - t_data
    if ckpt is None and hasattr(model, "init_from_data") and not data.streamed:  # fastnet's whitening layer
        model.init_from_data(normalize(data.train.images[:5000], train_loader.mean.cpu(), train_loader.std.cpu()))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    task.to(device)
    optimizer = build_optimizer(model, cfg.optim, head, keep=set(frozen) if tcfg.unfreeze_at_epoch else set())
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.accumulate_steps)
    budget = None
    if tcfg.time_budget_minutes is not None:
        budget = TimeBudget(tcfg.time_budget_minutes, tcfg.time_budget_counts_eval)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, tcfg.epochs, budget)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and tcfg.precision == "fp16")
    forward = model
    if world > 1:  # gradients averaged across ranks in backward; the module itself stays unwrapped for state
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ema = None
    if tcfg.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tcfg.ema_decay), use_buffers=True)
    progress = None
    if main_rank:
        progress = make_progress(tcfg.progress, tcfg.epochs, len(train_loader), train_loader.batch_size)
    trainer = Trainer(
        model=model,
        task=task,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        train_loader=train_loader,
        eval_loaders=eval_loaders,
        cfg=tcfg,
        device=device,
        ema=ema,
        train_model=CompiledForward(forward, tcfg.compile_mode, cfg.model.name) if use_compile else forward,
        mix=mix,
        callbacks=([progress] if progress is not None else [])
        + ([Unfreeze(model, frozen, tcfg.unfreeze_at_epoch)] if tcfg.unfreeze_at_epoch else [])
        + list(callbacks),
        start_time=start,
        budget=budget,
    )
    state = TrainState(loss_sum=torch.zeros((), device=device))
    if ckpt is not None:
        try:
            state = trainer.load_state_dict(ckpt)
            set_rng_state(ckpt["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:  # ours, but from another model or optimizer
            raise UserError(
                f"{resume_dir / layout.LAST}: checkpoint does not match this run ({first_line(e)})"
            ) from None

    saved: dict[str, int] = {}  # where the newest checkpoint on disk stands: what a resume would continue from
    if ckpt is not None:
        saved.update(_position(state))

    # 3. The run directory.
    if resume_dir is not None:
        run_dir = resume_dir
    elif not main_rank:
        run_dir = None  # rank 0's, received below
    elif run_dir is not None:
        run_dir.mkdir(parents=True)  # compare's cells: a fixed name, checked to be free beforehand
    else:
        run_dir = rundir.new_run_dir(cfg)
    if world > 1:
        shared = [str(run_dir) if main_rank else None]
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    base = {
        "experiment": tcfg.experiment,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "task": task.__class__.__name__,
        "main_metric": task.main_metric,
        "mode": task.mode,
        "params": params,
        "flops": flops,
        "epochs": tcfg.epochs,
        "augment": augment_placement(cfg.data.augment),
        **({"task_stats": task.stats()} if task.stats() else {}),
        "data_info": vars(data.info),  # input size, mean/std, class names: `predict` and `export` need no data
    }
    best_key = f"val/{task.main_metric}" if "val" in eval_loaders else None

    details: dict[str, Any] = {}  # per-class test results of the final model

    def summary(status: str, final: dict[str, Any], best: dict[str, Any], error: str | None = None) -> None:
        if not main_rank:
            return
        peak = peak_memory_bytes(device)  # GPU on CUDA, else RSS
        seconds = {"data": round(seconds_data, 3), **{k: round(v, 3) for k, v in state.seconds.items()}}
        seconds["total"] = round(state.elapsed_offset + time.monotonic() - start, 3)
        rundir.write_summary(
            run_dir,
            {
                "status": status,
                **base,
                "epochs_completed": state.epoch,
                "final": final,
                "best": best,
                **({"test_details": details} if details else {}),
                "seconds": seconds,
                **({"time_budget": budget_record(tcfg, state)} if budget is not None else {}),
                "peak_memory_bytes": peak,  # kept for older readers
                "peak_rss_bytes": peak_rss_bytes(),
                "peak_gpu_bytes": peak if device.type == "cuda" else None,
                "error": error,
            },
        )

    def on_epoch_end(st: TrainState, row: dict[str, Any]) -> None:
        if best_key and best_key in row:
            value = row[best_key]
            better = st.best_value is None or (value > st.best_value if task.mode == "max" else value < st.best_value)
            if better:
                st.best_value, st.best_epoch = value, row["epoch"]
                if main_rank:
                    save_weights(run_dir / layout.BEST, trainer.eval_model, {"epoch": str(row["epoch"])})
        if main_rank:
            rundir.write_metrics(run_dir, st.rows)
        summary("running", row, _best_row(st))

    def checkpoint(st: TrainState) -> None:
        if not main_rank:
            return
        payload = trainer.state_dict(st)
        if world == 1:  # a finite loss can still leave inf weights behind; such a checkpoint is no good one
            _check_finite_weights(payload, st)
        payload["train_state"]["elapsed_offset"] = st.elapsed_offset + time.monotonic() - start
        save_checkpoint(run_dir / layout.LAST, {**payload, "rng": rng_state()})
        saved.clear()
        saved.update(_position(st))

    def where() -> str:
        if state.batch == 0 and state.epoch > 0:
            return f"after epoch {state.epoch}/{tcfg.epochs} (step {state.step})"
        return f"in epoch {state.epoch + 1}/{tcfg.epochs} at step {state.step}"

    def how_to_continue() -> str:
        if not saved:
            return "no checkpoint was written, so there is nothing to resume: run the same command again"
        if not (run_dir / layout.LAST).is_file():
            return f"{layout.LAST} is no longer a file, so there is nothing to resume: run the same command again"
        return f"continue with: visionbench train --resume {shlex.quote(str(run_dir))}"

    def record(status: str, message: str) -> None:
        """The failure's summary.json, when the run directory can still take it (not on a full disk)."""
        with contextlib.suppress(WriteFailed):
            summary(status, state.rows[-1] if state.rows else {}, _best_row(state), error=message)

    def interrupted(e: BaseException) -> Interrupted:
        """Checkpoint where the loop stopped consistently (and the config asks for checkpoints), record the status
        `interrupted`, and say how to continue, in one line."""
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        note = ""
        if isinstance(e, Interrupted) and e.safe and main_rank and world == 1 and _wants_checkpoints(tcfg):
            try:
                if saved != _position(state):  # else the loop has just written this very state
                    checkpoint(state)
                note = ", checkpoint written"
            except (WriteFailed, TrainingDiverged) as failure:
                note = f", the checkpoint could not be written ({failure})"
        elif saved and saved != _position(state):
            note = f" (the last checkpoint is from epoch {saved['epoch'] + 1}, step {saved['step']})"
        message = f"interrupted by {signal_name(signum)} {where()}{note}; {how_to_continue()}"
        record("interrupted", message)
        return Interrupted(signum, message)

    def failed(e: BaseException) -> BaseException:
        """A divergence or a write that failed, as one line that says where the run stopped and what is kept."""
        if isinstance(e, FolderGone):
            return FolderGone(f"{e} ({where()})")
        if isinstance(e, TrainingDiverged):
            kept = (
                f"the last good checkpoint ({layout.LAST}, epoch {saved['epoch'] + 1}, step {saved['step']}) is kept"
                if saved
                else "no checkpoint was written"
            )
            e = TrainingDiverged(f"{e}; stopped, {kept} (lower optim.lr or set trainer.grad_clip_norm)")
        elif isinstance(e, WriteFailed):
            e = WriteFailed(f"{e}; the run stopped {where()}; {how_to_continue()}")
        record("failed", str(e))
        return e

    trainer.on_epoch_end, trainer.checkpoint = on_epoch_end, checkpoint
    folder = contextlib.ExitStack()  # a run directory deleted mid-run is noticed, not re-created (utils/io.py)
    if main_rank:
        folder.enter_context(keep_folder(run_dir))
    try:
        if ckpt is None and main_rank:
            rundir.write_config(run_dir, cfg)
        if main_rank:
            rundir.write_env(run_dir, cfg, device)
        if summary_writer is not None and main_rank:
            trainer.writer = summary_writer(log_dir=str(run_dir / layout.TENSORBOARD), purge_step=state.epoch + 1)
        summary("running", state.rows[-1] if state.rows else {}, _best_row(state))
    except BaseException:
        folder.close()
        if ckpt is None and main_rank:  # a new run directory holding only a part of its first files: remove it
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if progress is not None:
        resumed = f"; resuming {where()}" if ckpt is not None else ""
        progress.message(f"writing to {run_dir}{resumed}")  # the end names it again as `run directory:`
        progress.message(_start_line(cfg, data, device, world, params, steps_per_epoch))

    # 4. Train, then the final and best evaluations.
    try:
        # a stop signal inside fit() is acted on between two steps, where the state checkpoints consistently;
        # under torchrun the ranks could not agree on that step, so there it stops at once
        with interrupts.deferred() if world == 1 else contextlib.nullcontext():
            fit(trainer, state)
        t_eval = time.monotonic()
        test_loader = eval_loaders["test"]
        if "test" not in trainer.outputs:  # resumed after the last epoch, or a budget spent by an evaluation
            metrics, *trainer.outputs["test"] = evaluate(trainer.eval_model, test_loader, task, device, tcfg)
            if not any(k.startswith("test/") for k in state.rows[-1]):
                state.rows[-1].update({f"test/{k}": v for k, v in metrics.items()})
                if main_rank:
                    rundir.write_metrics(run_dir, state.rows)
        final = dict(state.rows[-1])
        if main_rank:
            _write_artifacts(run_dir, task.artifacts(*trainer.outputs["test"]))
        details.update(task.details(*trainer.outputs["test"]))
        if best_key is None and main_rank:  # no validation split: the best weights are the final ones
            save_weights(run_dir / layout.BEST, trainer.eval_model, {"epoch": str(state.epoch)})
        if best_key is None or state.best_epoch == state.epoch:
            best = {"epoch": state.epoch, **{k: v for k, v in final.items() if "/" in k}}
        else:
            if world > 1:
                dist.barrier()  # rank 0 has written the best weights that every rank reads now
            best_model = copy.deepcopy(trainer.eval_model)
            load_weights(run_dir / layout.BEST, best_model)
            metrics, _, _ = evaluate(best_model, test_loader, task, device, tcfg)
            best = {**_best_row(state), **{f"test/{k}": v for k, v in metrics.items()}}
        state.seconds["eval"] += time.monotonic() - t_eval
        summary("finished", final, best)
        if world > 1:
            dist.barrier()  # every rank done before any tears the group down
    except BaseException as e:  # noqa: BLE001  (record the failure, then let it propagate)
        if world > 1:  # on the way out already: torchrun's SIGTERM must not interrupt the record or the one line
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with interrupts.ignored():  # the last checkpoint and the status are written whole, even on a 2nd Ctrl-C
            if isinstance(e, (Interrupted, KeyboardInterrupt)):
                raise interrupted(e) from None
            if isinstance(e, (TrainingDiverged, WriteFailed)):
                raise failed(e) from None
            status = e.run_status if isinstance(e, RunStopped) else "failed"
            record(status, str(e) or type(e).__name__)
        if world > 1 and _peer_lost(e):
            raise PeerFailed(
                f"{run_dir}: rank {rank} of {world} lost its peers ({first_line(e, 120)}); "
                f"continue with --resume {run_dir}"
            ) from None
        raise
    finally:
        folder.close()
        if progress is not None:
            progress.close()  # the bar stopped and the cursor back, however the run ended
        if trainer.writer is not None:
            trainer.writer.close()
        if world > 1:
            # the DDP wrapper goes before its process group: a reducer outliving the group can make gloo abort the
            # process at exit ("terminate called without an active exception", 4 runs in 10 here without this)
            trainer.train_model = forward = None
            gc.collect()
            dist.destroy_process_group()
    return run_dir


def _position(state: TrainState) -> dict[str, int]:
    return {"epoch": state.epoch, "batch": state.batch, "step": state.step}


def _wants_checkpoints(tcfg) -> bool:
    """Whether the config asks for checkpoints during the run (not only the final one)."""
    return any(
        v is not None
        for v in (tcfg.checkpoint_every_minutes, tcfg.checkpoint_every_epochs, tcfg.checkpoint_every_steps)
    )


def _check_finite_weights(payload: dict[str, Any], state: TrainState) -> None:
    """Refuse to checkpoint non-finite weights (one device sync; the checkpoint copies every tensor anyway)."""
    weights = {f"{part}.{k}": v for part in ("model", "ema") for k, v in (payload.get(part) or {}).items()}
    if first_non_finite(weights) is not None:
        raise TrainingDiverged(f"non-finite weights after step {state.step}, although the loss was finite")


def _start_line(cfg: RunConfig, data: Datasets, device: torch.device, world: int, params: int, steps: int) -> str:
    """What the run trains, on what and where, printed before the first step."""
    sizes = " / ".join(
        f"{len(split):,} {name}"
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
        if split is not None
    )
    where = f"{device}" + (f" x {world} processes" if world > 1 else "")
    return (
        f"{cfg.model.name} ({params:,} parameters) on {cfg.data.name} ({sizes} images), device {where}, "
        f"{cfg.trainer.epochs} epoch{'s' if cfg.trainer.epochs != 1 else ''} of {steps:,} steps"
    )


def _peer_lost(e: BaseException) -> bool:
    """An error of a collective whose peer died (gloo: connection closed or reset; NCCL: a backend error)."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(w in text for w in ("gloo", "Gloo", "NCCL", "Connection", "connection"))


def tensorboard_writer_class():
    """torch.utils.tensorboard's SummaryWriter, or a UserError when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "trainer.tensorboard: needs the tensorboard package (pip install 'visionbench[tensorboard]')"
        ) from None
    return SummaryWriter


def budget_record(tcfg, state: TrainState) -> dict[str, Any]:
    """summary.json's account of a time-budgeted run: the budget, the seconds counted against it, what ended it."""
    budget_s = tcfg.time_budget_minutes * 60
    return {
        "minutes": tcfg.time_budget_minutes,
        "counts_eval": tcfg.time_budget_counts_eval,
        "used_seconds": round(state.budget_seconds, 3),
        "used_fraction": round(state.budget_seconds / budget_s, 4),
        "ended_by": "budget" if state.budget_seconds >= budget_s else "epochs" if state.epoch >= tcfg.epochs else None,
    }


def _best_row(state: TrainState) -> dict[str, Any]:
    if state.best_epoch is None:
        return {}
    row = state.rows[state.best_epoch - 1]
    return {"epoch": state.best_epoch, **{k: v for k, v in row.items() if k.startswith("val/")}}


def _write_artifacts(run_dir: Path, artifacts: dict[str, Any]) -> None:
    """Task artifacts: a confusion matrix as JSON and as CSV with class names; a dict of equal-length columns
    (predictions) as CSV; anything else as JSON."""
    for name, value in artifacts.items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if name == layout.CONFUSION_MATRIX:
            write_json(run_dir / layout.artifact(name), value)
            writer.writerow(["true\\pred", *value["class_names"]])
            for cls, counts in zip(value["class_names"], value["rows_true_cols_pred"], strict=True):
                writer.writerow([cls, *counts])
        elif isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
            writer.writerow(list(value))
            writer.writerows(zip(*value.values(), strict=True))
        else:
            write_json(run_dir / layout.artifact(name), value)
            continue
        write_text(run_dir / layout.artifact(name, suffix=".csv"), buf.getvalue())
