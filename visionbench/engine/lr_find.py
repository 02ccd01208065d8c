"""`lr_find(cfg)`: the learning-rate range test (Smith, 2015, https://arxiv.org/abs/1506.01186, section 3.3; the
method of fastai's `Learner.lr_find`) on a RunConfig's model, data and optimizer.

The learning rate grows exponentially from `start_lr` to `end_lr`, one value per optimizer step, on batches of the
normal training loader (epochs cycle when the sweep is longer than one), each step taken as training takes it
(`loop.TrainStep`); the training loss is smoothed with a bias-corrected exponential moving average and the sweep
stops once that diverges. `sweep` restores the model, the optimizer and every RNG exactly afterwards, so that
training can follow in the same process. The result is written as files (`write_result`); its figure is the
report layer's (`report.plots.plot_lr_find`, drawn from them).

Three suggestions are read off the smoothed curve (`suggest`), designed to move little between seeds:

- `valley` (the one presented first): the geometric middle of the descent into the loss minimum. The descent
  starts where the smoothed loss has fallen by `VALLEY_ONSET` of its total drop, which does not depend on how far
  below the interesting range the sweep starts. fastai's rule (the middle of the longest decreasing stretch) does:
  its stretch begins on the plateau, so on Fashion-MNIST it moved 5-8x between starts at 1e-7 and 1e-3, this one
  under 1.1x; it also sat ~10x lower (0.003-0.005).
- `steepest`: the most negative slope of smoothed loss against log10(lr) before the minimum, each slope a
  least-squares line over as many steps as the EMA remembers (`slope_half_window`), so that a noisy pair of
  neighbours cannot win.
- `min/10`: a tenth of the lr of the smoothed minimum (fastai's `minimum`), a cheap cross-check.

As in fastai, the suggestions come from the EMA curve that is saved and plotted, which lags the raw loss by about
beta / (1 - beta) steps (0.8 decades of lr at the defaults): they sit to the right of where the raw loss falls.
A lag-free (forward-backward) smoothing was as stable but put every suggestion 3-5x lower on Fashion-MNIST, below
the lr its tuned config trains with (0.05; valley: 0.026-0.053 over 20 seeds).

`benchmarks/lr_find_spread.py` measures how far each moves across seeds.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionbench import layout
from visionbench.config import RunConfig, TrainerConfig
from visionbench.engine import rundir
from visionbench.engine.assembly import assemble
from visionbench.engine.checkpoint import rng_state, set_rng_state
from visionbench.engine.loop import TrainingDiverged, TrainStep
from visionbench.engine.runtime import grad_scaler, set_up_process
from visionbench.errors import UserError
from visionbench.tasks.base import Task
from visionbench.utils.io import write_json, write_text

log = logging.getLogger(__name__)

START_LR = 1e-7
END_LR = 10.0
# NOTE: fastai's 100 steps are too few for a model trained from scratch: small_cnn on Fashion-MNIST learns and
# diverges within ~15 steps of a 100-step sweep from 1e-7 to 10, while the EMA below remembers ~50, so the
# suggestions of seeds 0-4 spread by 9-560x; with 500 steps by at most 2.02x (benchmarks/lr_find_spread.py).
STEPS = 500
BETA = 0.98  # EMA of the loss: fastai's default, an effective window of ~1 / (1 - beta) = 50 steps
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this multiple of the best smoothed loss so far
VALLEY_ONSET = 0.1  # the descent begins where the smoothed loss has fallen by this fraction of its total drop
MAIN = "valley"  # the suggestion printed first (the stabler one in benchmarks/lr_find_spread.py)


@dataclasses.dataclass
class Curve:
    """One sweep: the base lr of every step taken (a group's lr is this times its `lr_scale`), its training loss
    and the smoothed loss; `stop` says why it ended: `end` (all steps), `diverged` or `non-finite`."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stop: str
    seconds: float


@dataclasses.dataclass
class LRFindResult:
    """A sweep, its suggestions (`valley`, `steepest`, `min/10`: base learning rates) and the files written
    (`csv`, `json`; the CLI adds the figure, `png`)."""

    curve: Curve
    suggestions: dict[str, float]
    files: dict[str, Path]


def check_range(start_lr: float, end_lr: float, steps: int, beta: float) -> None:
    """Refuse a sweep that cannot be run, before anything is built (names as the CLI spells them)."""
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise UserError(f"--start-lr: expected a positive number, got {start_lr}")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise UserError(f"--end-lr: expected a number above --start-lr ({start_lr:g}), got {end_lr:g}")
    if steps < 2:
        raise UserError(f"--steps: expected at least 2 (a sweep needs two learning rates), got {steps}")
    if not 0.0 <= beta < 1.0:
        raise UserError(f"--beta: expected 0 <= beta < 1, got {beta}")


def exponential_lrs(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """`steps` learning rates from `start_lr` to `end_lr` (both included), a constant ratio apart."""
    ratio = math.log(end_lr / start_lr) / (steps - 1)
    return [start_lr * math.exp(ratio * i) for i in range(steps - 1)] + [end_lr]


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Exponential moving average with Adam's bias correction, so that early values are not pulled towards 0."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def sweep(
    model: nn.Module,
    task: Task,
    optimizer: torch.optim.Optimizer,
    loader,
    lrs: list[float],
    cfg: TrainerConfig,
    device: torch.device,
    beta: float = BETA,
    mix=None,
) -> Curve:
    """Take one optimizer step at each of `lrs` (fewer if the smoothed loss diverges) as training would: autocast,
    `cfg.accumulate_steps` micro-batches per step, `cfg.grad_clip_norm`, mixup/cutmix when `mix` is given.

    Every parameter group's lr is `lr * group["lr_scale"]`, so ratios such as `optim.backbone_lr_scale` hold.
    Afterwards (also on an exception) the model's and optimizer's state dicts, the gradients, the train/eval
    mode of every module and every RNG are put back as they were.
    """
    saved = _snapshot(model, optimizer)
    step = TrainStep(model, task, optimizer, grad_scaler(device, cfg.precision), cfg, device, mix)
    batches = _cycle(loader)
    taken, losses, smoothed, stop = [], [], [], "end"
    avg, best = 0.0, math.inf
    t0 = time.monotonic()
    try:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for i, lr in enumerate(lrs, start=1):
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = _step(step, batches)
            avg = beta * avg + (1 - beta) * loss
            value = avg / (1 - beta**i)
            taken.append(lr)
            losses.append(loss)
            smoothed.append(value)
            if not math.isfinite(value):
                stop = "non-finite"
                break
            if value > DIVERGE_FACTOR * best:
                stop = "diverged"
                break
            best = min(best, value)
    finally:
        batches.close()  # a streamed loader's worker processes end with its iterator
        _restore(model, optimizer, saved)
    return Curve(taken, losses, smoothed, stop, time.monotonic() - t0)


def suggest(lrs: list[float], smoothed: list[float], beta: float = BETA) -> dict[str, float]:
    """`valley`, `steepest` and `min/10` of a smoothed curve (see the module docstring); `valley` and `steepest`
    are members of `lrs`, `min/10` a tenth of one. Points from the first non-finite loss on are ignored.

    Args:
        lrs: the learning rates swept, increasing.
        smoothed: the smoothed loss at each (`smooth`).
        beta: the smoothing used; the slopes of `steepest` are fitted over the same number of steps.
    """
    x, y = _finite_prefix(lrs, smoothed)
    return {
        "valley": float(lrs[valley_index(x, y)]),
        "steepest": float(lrs[steepest_index(x, y, slope_half_window(beta))]),
        "min/10": float(lrs[int(np.argmin(y))]) / 10,
    }


def valley_index(log_lrs: np.ndarray, y: np.ndarray) -> int:
    """The point nearest the geometric middle of the descent into the minimum of `y` (see the module docstring).

    Args:
        log_lrs: log10 of the learning rates, increasing.
        y: the smoothed loss at each, all finite.
    """
    m = int(np.argmin(y))
    top = float(np.max(y[: m + 1]))
    drop = top - float(y[m])
    if m == 0 or drop <= 0:
        return m  # no descent at all: the lowest point is the only defensible answer
    above = np.nonzero(y[: m + 1] >= top - VALLEY_ONSET * drop)[0]
    onset = int(above[-1])  # the last point before the loss has really started to fall
    middle = (log_lrs[onset] + log_lrs[m]) / 2
    return onset + int(np.argmin(np.abs(log_lrs[onset : m + 1] - middle)))


def steepest_index(log_lrs: np.ndarray, y: np.ndarray, half_window: int) -> int:
    """The point of the most negative fitted slope dy / dlog10(lr) on the descent, i.e. up to the minimum of `y`;
    the points after it (the divergence, whose last smoothed value can be huge) are left out of every fit."""
    m = int(np.argmin(y))
    if m == 0:
        return 0
    return int(np.argmin(local_slopes(log_lrs[: m + 1], y[: m + 1], half_window)))


def slope_half_window(beta: float) -> int:
    """Points on either side of each slope fit: half the EMA's effective window of 1 / (1 - beta) steps, since
    the smoothed curve cannot resolve anything shorter (25 for beta = 0.98), at least 1."""
    return max(1, round(0.5 / (1 - beta)))


def local_slopes(x: np.ndarray, y: np.ndarray, half_window: int) -> np.ndarray:
    """Least-squares slope of y against x over the `half_window` points on either side of each point (fewer at
    the ends): a derivative that no single noisy point can dominate."""
    n = len(x)
    out = np.zeros(n)
    for i in range(n):
        xs, ys = x[max(0, i - half_window) : i + half_window + 1], y[max(0, i - half_window) : i + half_window + 1]
        dx = xs - xs.mean()
        denom = float(dx @ dx)
        out[i] = float(dx @ (ys - ys.mean())) / denom if denom > 0 else 0.0
    return out


def lr_find(
    cfg: RunConfig,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
    beta: float = BETA,
    out: Path | None = None,
    overwrite: bool = False,
) -> LRFindResult:
    """Sweep `cfg`'s freshly built model and optimizer, then write `lr_find.csv`, `lr_find.json` and `config.yaml`
    into `out` (default: `<trainer.out_dir>/<experiment>/lr_find-<time>-<model>-<dataset>/`).

    The folder is created only after the sweep has run, so bad input leaves nothing behind. `out` must be new or
    empty, or an earlier lr-find result replaced with `overwrite`; see `check_out`.

    Raises:
        UserError: a bad range (see `check_range`), an `out` lr-find may not write, or anything `train` would
            refuse.
        TrainingDiverged: the very first loss is not finite.
    """
    check_range(start_lr, end_lr, steps, beta)
    if out is not None:
        check_out(Path(out), overwrite)
    device = set_up_process(cfg.trainer)
    parts = assemble(cfg, device, eval_splits=())  # the same as `train`'s; the sweep sets every lr itself
    model, task, optimizer, loader = parts.model, parts.task, parts.optimizer, parts.train_loader

    lrs = exponential_lrs(start_lr, end_lr, steps)
    curve = sweep(model, task, optimizer, loader, lrs, cfg.trainer, device, beta, parts.mix)
    if curve.stop == "non-finite" and len(curve.lrs) == 1:
        raise TrainingDiverged(f"the first loss of the sweep (lr {start_lr:g}) is not finite: nothing to suggest")
    suggestions = suggest(curve.lrs, curve.smoothed, beta)
    if curve.stop != "end" and len(curve.lrs) < 10:
        log.warning("the loss diverged after %d steps: lower --start-lr", len(curve.lrs))

    out = Path(out) if out is not None else rundir.new_run_dir(cfg, prefix="lr_find-")
    settings = {"start_lr": start_lr, "end_lr": end_lr, "steps": steps, "beta": beta}
    try:
        files = write_result(out, cfg, curve, suggestions, settings)
    except OSError as e:  # each file is written whole (atomically) or not at all
        raise cannot_write(out, e) from None
    return LRFindResult(curve, suggestions, files)


def cannot_write(out: Path, e: OSError) -> UserError:
    """A failed write of an lr-find result (its files, or the figure the CLI draws), as one line."""
    return UserError(f"{e.filename or out}: cannot write the lr-find result ({e.strerror or e})")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an `--out` that lr-find would write over without being asked: a file, a folder inside a training
    run (or another lr-find folder), a non-empty folder that is not an lr-find result, or an lr-find result
    without `overwrite`. A new or empty folder is fine.

    Raises:
        UserError: naming `--out` and what to do instead.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    inside = layout.enclosing_run_dir(out)
    if inside is not None:
        raise UserError(f"--out {out}: inside the run directory {inside}; give a folder of its own")
    if not out.is_dir():
        return
    try:
        entries = {p.name for p in out.iterdir()}
    except OSError as e:
        raise UserError(f"--out {out}: cannot list the folder ({e.strerror or e})") from None
    if not entries:
        return
    if layout.LR_FIND_JSON in entries and entries <= set(layout.LR_FIND_FILES):
        if not overwrite:
            raise UserError(f"--out {out}: holds an earlier lr-find result; pass --overwrite to replace it")
        return
    if layout.is_run_dir(out):
        raise UserError(f"--out {out}: a training run's directory; lr-find writes into a new or empty folder")
    raise UserError(
        f"--out {out}: a folder that is not empty and not an lr-find result (holds e.g. {sorted(entries)[0]!r}); "
        "give a new or empty folder"
    )


def write_result(
    out: Path, cfg: RunConfig, curve: Curve, suggestions: dict[str, float], settings: dict[str, Any]
) -> dict[str, Path]:
    """The curve and suggestions (`write_curve`) and the resolved config; returns the paths by kind."""
    files = write_curve(out, curve, suggestions, settings)
    rundir.write_config(out, cfg)
    return files


def write_curve(out: Path, curve: Curve, suggestions: dict[str, float], settings: dict[str, Any]) -> dict[str, Path]:
    """The curve as CSV (lr, loss, smoothed_loss) and the sweep's settings and suggestions as JSON, each written
    atomically; returns the paths by kind (`csv`, `json`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["lr", "loss", "smoothed_loss"])
    writer.writerows(zip(curve.lrs, curve.losses, curve.smoothed, strict=True))
    files = {"csv": out / layout.LR_FIND_CSV, "json": out / layout.LR_FIND_JSON}
    write_text(files["csv"], buf.getvalue())
    summary = {
        **settings,
        "steps_taken": len(curve.lrs),
        "stop": curve.stop,
        "seconds": round(curve.seconds, 3),
        "main": MAIN,
        "suggestions": suggestions,
    }
    write_json(files["json"], summary)
    return files


def _step(step: TrainStep, batches) -> float:
    """One optimizer step over `cfg.accumulate_steps` micro-batches (as `train_one_epoch` takes them, across epoch
    ends); returns their mean loss."""
    accumulate = step.cfg.accumulate_steps
    total = 0.0
    for _ in range(accumulate):
        images, targets = next(batches)
        total += float(step.backward(images, targets).detach()) / accumulate
    step.update()
    return total


def _cycle(loader):
    """The training batches of epoch 0, 1, 2 ... without end (each epoch in the order training would see it)."""
    epoch = 0
    while True:
        empty = True
        for batch in loader.epoch(epoch):
            empty = False
            yield batch
        if empty:
            raise UserError("the training split has no batch (check data.subset and trainer.batch_size)")
        epoch += 1


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    # deep copies: state_dict() returns the live tensors, which the sweep is about to change
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "modes": {name: m.training for name, m in model.named_modules()},
        "rng": rng_state(),
    }


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    model.load_state_dict(saved["model"])  # copies into the same parameter objects the optimizer holds
    optimizer.load_state_dict(saved["optimizer"])  # state and every group's hyper-parameters, lr included
    for p, grad in zip(model.parameters(), saved["grads"], strict=True):
        p.grad = grad
    for name, m in model.named_modules():
        m.training = saved["modes"][name]
    set_rng_state(saved["rng"])


def _finite_prefix(lrs: list[float], smoothed: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(log10 lr, smoothed loss) up to the first non-finite loss; a curve with no finite point is a bug."""
    y = np.asarray(smoothed, dtype=np.float64)
    bad = np.nonzero(~np.isfinite(y))[0]
    n = int(bad[0]) if len(bad) else len(y)
    if n == 0:
        raise ValueError("no finite loss in the curve")
    return np.log10(np.asarray(lrs[:n], dtype=np.float64)), y[:n]
