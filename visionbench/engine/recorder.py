"""The run directory's bookkeeping as a loop callback: `Recorder` keeps metrics.csv, summary.json, the best and last
weights, TensorBoard and the end's test artifacts as the loop goes, and tells the stop story when a run ends early.

Rank 0 alone writes (under torchrun every rank evaluates, rank 0 writes). Every file is written atomically
(utils/io.py), and the run directory, once open, is never re-created when something deletes it mid-run.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from visionbench import layout, per_image
from visionbench.config import RunConfig, TrainerConfig
from visionbench.data import augment_placement
from visionbench.engine import rundir
from visionbench.engine.assembly import Assembly
from visionbench.engine.checkpoint import first_non_finite, load_weights, rng_state, save_checkpoint, save_weights
from visionbench.engine.loop import RunStopped, Trainer, TrainingDiverged, TrainState, evaluate
from visionbench.engine.runtime import PeerFailed, Process, peak_memory_bytes, peak_rss_bytes, process_start
from visionbench.errors import UserError, first_line
from visionbench.models import count_flops
from visionbench.utils import interrupts
from visionbench.utils.interrupts import Interrupted, signal_name
from visionbench.utils.io import FolderGone, WriteFailed, keep_folder, write_json, write_text


def place_run_dir(cfg: RunConfig, resume_dir: Path | None, run_dir: Path | None, proc: Process) -> Path:
    """The run's directory: `resume_dir`, or `run_dir` created (it must not exist yet), or a fresh timestamped one;
    rank 0 creates it and tells the other ranks."""
    rank, world = proc.shard
    if resume_dir is not None:
        run_dir = resume_dir
    elif rank != 0:
        run_dir = None  # rank 0's, received below
    elif run_dir is not None:
        run_dir.mkdir(parents=True)  # compare's cells: a fixed name, checked to be free beforehand
    else:
        run_dir = rundir.new_run_dir(cfg)
    if world > 1:
        shared = [str(run_dir) if rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    return run_dir


class Recorder:
    """Callback (`after_validate`, `checkpoint`, `after_fit`) that keeps the run directory of a training run.

    Args:
        cfg: the run's config.
        parts: what the config built (the summary names its model, data and size).
        trainer: what the loop drives: the weights it saves, the evaluations it reads.
        state: the loop's state, the one `fit` moves on.
        run_dir: the run directory (`place_run_dir`).
        proc: this process's rank and device.
        start: the process's start on time.monotonic's clock (elapsed seconds count from it).
    """

    def __init__(
        self,
        cfg: RunConfig,
        parts: Assembly,
        trainer: Trainer,
        state: TrainState,
        run_dir: Path,
        proc: Process,
        start: float,
    ):
        self.cfg, self.tcfg, self.trainer, self.state, self.run_dir = cfg, cfg.trainer, trainer, state, run_dir
        self.rank, self.world = proc.shard
        self.main_rank = self.rank == 0  # the one process that writes files
        self.start, self.seconds_data = start, parts.seconds_data
        self.process_start = process_start() or start
        self.first_step: float | None = None  # when this process's first training step ended (time.monotonic)
        self.base = _summary_base(cfg, parts)
        self._flops_of = (parts.model, parts.data.info.input_size)  # counted as the run ends (assembly says why)
        self.best_key = f"val/{parts.task.main_metric}" if "val" in parts.eval_loaders else None
        self.details: dict[str, dict[str, Any]] = {}  # split -> per-class results of the final model
        self.saved: dict[str, int] = {}  # where the newest checkpoint on disk stands: what a resume continues from
        self.writer = None  # TensorBoard's SummaryWriter (trainer.tensorboard)
        self._folder = contextlib.ExitStack()

    # --- the run directory's life ------------------------------------------------------------------------------

    def open(self, new: bool, writer_class=None) -> None:
        """Write the first files: a new run's config.yaml, env.json, the TensorBoard log (`writer_class`) and a
        `running` summary; from here on a run directory deleted mid-run is noticed, not re-created (utils/io.py).
        A new run directory that cannot take its first files is removed."""
        if not new:
            self.saved = _position(self.state)  # the checkpoint resumed from
            if self.cfg.model.pretrained:  # loaded by the first start only; its record is kept from there
                previous = rundir.read_summary(self.run_dir).get("pretrained")
                self.base.update({"pretrained": previous} if previous else {})
        if not self.main_rank:
            return
        self._folder.enter_context(keep_folder(self.run_dir))
        try:
            if new:
                rundir.write_config(self.run_dir, self.cfg)
            rundir.write_env(self.run_dir, self.cfg, self.trainer.device)
            if writer_class is not None:
                log_dir = str(self.run_dir / layout.TENSORBOARD)
                self.writer = writer_class(log_dir=log_dir, purge_step=self.state.epoch + 1)
            self.summary("running", self.state.rows[-1] if self.state.rows else {}, _best_row(self.state))
        except BaseException:
            self.close()
            if new:  # holding only a part of its first files
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def close(self) -> None:
        """However the run ended."""
        self._folder.close()
        if self.writer is not None:
            self.writer.close()

    def summary(self, status: str, final: dict[str, Any], best: dict[str, Any], error: str | None = None) -> None:
        """summary.json as the run stands: `status` is running, finished, failed, interrupted or a RunStopped's."""
        if not self.main_rank:
            return
        state, device = self.state, self.trainer.device
        peak = peak_memory_bytes(device)  # GPU on CUDA, else RSS
        seconds = {"data": round(self.seconds_data, 3), **{k: round(v, 3) for k, v in state.seconds.items()}}
        seconds["total"] = round(state.elapsed_offset + time.monotonic() - self.start, 3)
        if self.first_step is not None:  # start-up: the process's start (interpreter, imports, data) to one step done
            seconds["to_first_step"] = round(self.first_step - self.process_start, 3)
        rundir.write_summary(
            self.run_dir,
            {
                "status": status,
                **self.base,
                "epochs_completed": state.epoch,
                "final": final,
                "best": best,
                **{f"{split}_details": details for split, details in self.details.items() if details},
                "seconds": seconds,
                **({"time_budget": budget_record(self.tcfg, state)} if self.trainer.budget is not None else {}),
                "peak_memory_bytes": peak,  # kept for older readers
                "peak_rss_bytes": peak_rss_bytes(),
                "peak_gpu_bytes": peak if device.type == "cuda" else None,
                "error": error,
            },
        )

    # --- the loop's events ------------------------------------------------------------------------------------

    def after_batch(self, state: TrainState) -> None:
        if self.first_step is None:
            self.first_step = time.monotonic()

    def after_validate(self, state: TrainState) -> None:
        """The epoch's row: TensorBoard, the best weights when the validation metric improved, metrics.csv and
        summary.json."""
        row = state.rows[-1]
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step", layout.WALL_TIME) and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"], walltime=row.get(layout.WALL_TIME))
            self.writer.flush()
        if self.best_key and self.best_key in row:
            value, mode = row[self.best_key], self.trainer.task.mode
            better = state.best_value is None or (
                value > state.best_value if mode == "max" else value < state.best_value
            )
            if better:
                state.best_value, state.best_epoch = value, row["epoch"]
                if self.main_rank:
                    save_weights(self.run_dir / layout.BEST, self.trainer.eval_model, {"epoch": str(row["epoch"])})
        if self.main_rank:
            rundir.write_metrics(self.run_dir, state.rows)
        self.summary("running", row, _best_row(state))

    def checkpoint(self, state: TrainState) -> None:
        """checkpoints/last: everything a bit-identical resume needs, never from non-finite weights."""
        if not self.main_rank:
            return
        payload = self.trainer.state_dict(state)
        if self.world == 1:  # a finite loss can still leave inf weights behind; such a checkpoint is no good one
            _check_finite_weights(payload, state)
        payload["train_state"]["elapsed_offset"] = state.elapsed_offset + time.monotonic() - self.start
        save_checkpoint(self.run_dir / layout.LAST, {**payload, "rng": rng_state()})
        self.saved = _position(state)

    def after_fit(self, state: TrainState) -> None:
        """The final model's test results (measured here when the loop did not: a resume after the last epoch, or
        a budget spent by an evaluation), its task artifacts and details on val and test, the best weights' test
        results, status `finished`."""
        trainer, task = self.trainer, self.trainer.task
        t_eval = time.monotonic()
        if "test" not in trainer.outputs:
            metrics, *trainer.outputs["test"] = self._test(trainer.eval_model)
            if not any(k.startswith("test/") for k in state.rows[-1]):
                state.rows[-1].update({f"test/{k}": v for k, v in metrics.items() if math.isfinite(v)})
                if self.main_rank:
                    rundir.write_metrics(self.run_dir, state.rows)
        if "val" in trainer.eval_loaders and "val" not in trainer.outputs:  # a resume after the last epoch
            _, *trainer.outputs["val"] = self._test(trainer.eval_model, "val")
        final = dict(state.rows[-1])
        for split in ("val", "test"):
            if split in trainer.outputs:
                if self.main_rank:
                    _write_artifacts(self.run_dir, task.artifacts(*trainer.outputs[split]), split)
                self.details[split] = task.details(*trainer.outputs[split])
        if self.main_rank:
            per_image.save(self.run_dir / layout.per_image(), task, *trainer.outputs["test"])
        if self.best_key is None and self.main_rank:  # no validation split: the best weights are the final ones
            save_weights(self.run_dir / layout.BEST, trainer.eval_model, {"epoch": str(state.epoch)})
        if self.best_key is None or state.best_epoch == state.epoch:
            best = {"epoch": state.epoch, **{k: v for k, v in final.items() if "/" in k}}
        else:
            if self.world > 1:
                dist.barrier()  # rank 0 has written the best weights that every rank reads now
            best_model = copy.deepcopy(trainer.eval_model)
            load_weights(self.run_dir / layout.BEST, best_model)
            metrics, _, _ = self._test(best_model)
            best = {**_best_row(state), **{f"test/{k}": v for k, v in metrics.items()}}
        state.seconds["eval"] += time.monotonic() - t_eval
        if self.base["flops"] is None:
            self.base["flops"] = count_flops(*self._flops_of, name=self.cfg.model.name)
        self.summary("finished", final, best)
        if self.world > 1:
            dist.barrier()  # every rank done before any tears the group down

    def _test(self, model, split: str = "test"):
        trainer = self.trainer
        return evaluate(model, trainer.eval_loaders[split], trainer.task, trainer.device, self.tcfg)

    # --- the stop story ---------------------------------------------------------------------------------------

    def stopped(self, e: BaseException) -> BaseException:
        """Record a run that ends with `e` (status interrupted, failed or a RunStopped's; a checkpoint first where
        a stop signal came at a consistent point); returns what to raise: one line that says where the run stopped,
        what is kept and how to continue, or `e` itself."""
        if self.world > 1:  # on the way out already: torchrun's SIGTERM must not interrupt the record or the one line
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with interrupts.ignored():  # the last checkpoint and the status are written whole, even on a 2nd Ctrl-C
            if isinstance(e, (Interrupted, KeyboardInterrupt)):
                return self._interrupted(e)
            if isinstance(e, (TrainingDiverged, WriteFailed)):
                return self._failed(e)
            self._record(e.run_status if isinstance(e, RunStopped) else "failed", str(e) or type(e).__name__)
        if self.world > 1 and _peer_lost(e):
            return PeerFailed(
                f"{self.run_dir}: rank {self.rank} of {self.world} lost its peers ({first_line(e, 120)}); "
                f"continue with --resume {self.run_dir}"
            )
        return e

    def where(self) -> str:
        state, epochs = self.state, self.tcfg.epochs
        if epochs == 0:
            return "after its evaluation (0 epochs)" if state.rows else "in its evaluation (0 epochs)"
        if state.batch == 0 and state.epoch > 0:
            return f"after epoch {state.epoch}/{epochs} (step {state.step})"
        return f"in epoch {state.epoch + 1}/{epochs} at step {state.step}"

    def _how_to_continue(self) -> str:
        if not self.saved:
            return "no checkpoint was written, so there is nothing to resume: run the same command again"
        if not (self.run_dir / layout.LAST).is_file():
            return f"{layout.LAST} is no longer a file, so there is nothing to resume: run the same command again"
        return f"continue with: visionbench train --resume {shlex.quote(str(self.run_dir))}"

    def _record(self, status: str, message: str) -> None:
        """The failure's summary.json, when the run directory can still take it (not on a full disk)."""
        with contextlib.suppress(WriteFailed):
            self.summary(status, self.state.rows[-1] if self.state.rows else {}, _best_row(self.state), error=message)

    def _interrupted(self, e: BaseException) -> Interrupted:
        """Checkpoint where the loop stopped consistently (and the config asks for checkpoints), record the status
        `interrupted`, and say how to continue, in one line."""
        state = self.state
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        note = ""
        if (
            isinstance(e, Interrupted)
            and e.safe
            and self.main_rank
            and self.world == 1
            and _wants_checkpoints(self.tcfg)
        ):
            try:
                if self.saved != _position(state):  # else the loop has just written this very state
                    self.checkpoint(state)
                note = ", checkpoint written"
            except (WriteFailed, TrainingDiverged) as failure:
                note = f", the checkpoint could not be written ({failure})"
        elif self.saved and self.saved != _position(state):
            note = f" (the last checkpoint is from epoch {self.saved['epoch'] + 1}, step {self.saved['step']})"
        message = f"interrupted by {signal_name(signum)} {self.where()}{note}; {self._how_to_continue()}"
        self._record("interrupted", message)
        return Interrupted(signum, message)

    def _failed(self, e: BaseException) -> BaseException:
        """A divergence or a write that failed, as one line that says where the run stopped and what is kept."""
        if isinstance(e, FolderGone):
            return FolderGone(f"{e} ({self.where()})")
        if isinstance(e, TrainingDiverged):
            saved = self.saved
            kept = (
                f"the last good checkpoint ({layout.LAST}, epoch {saved['epoch'] + 1}, step {saved['step']}) is kept"
                if saved
                else "no checkpoint was written"
            )
            e = TrainingDiverged(f"{e}; stopped, {kept} (lower optim.lr or set trainer.grad_clip_norm)")
        elif isinstance(e, WriteFailed):
            e = WriteFailed(f"{e}; the run stopped {self.where()}; {self._how_to_continue()}")
        self._record("failed", str(e))
        return e


def tensorboard_writer_class():
    """torch.utils.tensorboard's SummaryWriter, or a UserError when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "trainer.tensorboard: needs the tensorboard package (pip install 'visionbench[tensorboard]')"
        ) from None
    return SummaryWriter


def budget_record(tcfg: TrainerConfig, state: TrainState) -> dict[str, Any]:
    """summary.json's account of a time-budgeted run: the budget, the seconds counted against it, what ended it."""
    budget_s = tcfg.time_budget_minutes * 60
    return {
        "minutes": tcfg.time_budget_minutes,
        "counts_eval": tcfg.time_budget_counts_eval,
        "used_seconds": round(state.budget_seconds, 3),
        "used_fraction": round(state.budget_seconds / budget_s, 4),
        "ended_by": "budget" if state.budget_seconds >= budget_s else "epochs" if state.epoch >= tcfg.epochs else None,
    }


def _summary_base(cfg: RunConfig, parts: Assembly) -> dict[str, Any]:
    """What summary.json says of the run whatever its status: what was trained on what, and how big."""
    task = parts.task
    return {
        "experiment": cfg.trainer.experiment,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "task": task.__class__.__name__,
        "main_metric": task.main_metric,
        "mode": task.mode,
        "params": parts.params,
        "flops": parts.flops,
        "epochs": cfg.trainer.epochs,
        "augment": augment_placement(cfg.data.augment, parts.data.streamed),
        **({"task_stats": task.stats()} if task.stats() else {}),
        **({"pretrained": parts.transfer.record()} if parts.transfer is not None else {}),
        "data_info": vars(parts.data.info),  # input size, mean/std, class names: `predict` and `export` need no data
    }


def _position(state: TrainState) -> dict[str, int]:
    return {"epoch": state.epoch, "batch": state.batch, "step": state.step}


def _wants_checkpoints(tcfg: TrainerConfig) -> bool:
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


def _peer_lost(e: BaseException) -> bool:
    """An error of a collective whose peer died (gloo: connection closed or reset; NCCL: a backend error)."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(w in text for w in ("gloo", "Gloo", "NCCL", "Connection", "connection"))


def _best_row(state: TrainState) -> dict[str, Any]:
    if state.best_epoch is None:
        return {}
    row = state.rows[max(state.best_epoch - 1, 0)]  # rows of epochs 1, 2, ...; or the one of a run of 0 epochs
    return {"epoch": state.best_epoch, **{k: v for k, v in row.items() if k.startswith("val/")}}


def _write_artifacts(run_dir: Path, artifacts: dict[str, Any], split: str) -> None:
    """Task artifacts: a confusion matrix as JSON and as CSV with class names; a dict of equal-length columns
    (predictions) as CSV; anything else as JSON."""
    for name, value in artifacts.items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if name == layout.CONFUSION_MATRIX:
            write_json(run_dir / layout.artifact(name, split), value)
            writer.writerow(["true\\pred", *value["class_names"]])
            for cls, counts in zip(value["class_names"], value["rows_true_cols_pred"], strict=True):
                writer.writerow([cls, *counts])
        elif isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
            writer.writerow(list(value))
            writer.writerows(zip(*value.values(), strict=True))
        else:
            write_json(run_dir / layout.artifact(name, split), value)
            continue
        write_text(run_dir / layout.artifact(name, split, suffix=".csv"), buf.getvalue())
