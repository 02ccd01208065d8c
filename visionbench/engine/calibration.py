"""Temperature scaling of a finished run (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML):
`visionbench eval RUN --calibrate` fits one temperature T on the validation split's logits (never on test;
tasks/calibration.py fits it), reports ECE, Brier score and NLL before and after on the evaluated split, and
stores T beside the weights it was fitted for; `predict` then divides every logit by T before the softmax or sigmoid,
and `export` bakes the division into the exported graph.

The file, `temperature-<weights>.json` (layout.temperature), holds T, the split it was fitted on and its size, the
validation NLL before and after, and two digests: `weights_sha256`, the `state_digest` of the model's tensors as
loaded (checkpoint.weights_digest), and `config_sha256`, the SHA-256 of config.yaml's bytes. A temperature is used
only with the very weights and config it was fitted for: after a resumed run rewrites `checkpoints/last`, say, it is
refused with one line, not applied to weights it does not belong to.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from visionbench import layout
from visionbench.errors import UserError

if TYPE_CHECKING:
    from visionbench.engine.inference import LoadedRun
    from visionbench.tasks import Task

FITTED_ON = "val"  # the only split a temperature is fitted on: test stays unseen, the train split is overfitted


class Temperature(nn.Module):
    """Divides its input (a model's logits) by a fixed temperature: what export appends to the model."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


def check_calibratable(task: Task) -> None:
    if not task.calibratable:
        raise UserError(
            f"--calibrate: the {task.name} task's outputs are not probabilities; temperature scaling applies to "
            "classification and multi-label runs"
        )


def calibrate(
    run: LoadedRun, run_dir: Path, weights: str, fit: tuple[torch.Tensor, torch.Tensor], split: str, outputs
) -> dict[str, Any]:
    """Fit T on the validation split's `fit` (logits, targets), write the temperature file, and score the evaluated
    `split`'s `outputs` (logits, targets) before and after.

    Returns:
        eval's `calibration` entry: temperature, fitted_on, fitted_images, in_sample (the evaluated split is the
        one T was fitted on), before and after (ece, brier, nll), file.

    Raises:
        UserError: a task whose outputs are not probabilities, or no temperature to fit (tasks/calibration.py).
    """
    from visionbench.tasks.calibration import fit_temperature
    from visionbench.utils.io import write_json

    task = run.task
    check_calibratable(task)
    temperature = fit_temperature(*fit, task.nll)
    path = run_dir / layout.temperature(weights)
    write_json(
        path,
        {
            "temperature": temperature,
            "fitted_on": FITTED_ON,
            "images": len(fit[1]),
            "nll_before": _nll(task, fit[0], fit[1]),
            "nll_after": _nll(task, fit[0] / temperature, fit[1]),
            "weights": weights,
            "weights_sha256": _weights_sha256(run.model),
            "config_sha256": _config_sha256(run_dir),
        },
    )
    logits, targets = outputs
    return {
        "temperature": round(temperature, 6),
        "fitted_on": FITTED_ON,
        "fitted_images": len(fit[1]),
        "in_sample": split == FITTED_ON,
        "before": _scores(task, logits, targets),
        "after": _scores(task, logits / temperature, targets),
        "file": str(path),
    }


def _nll(task: Task, logits: torch.Tensor, targets: torch.Tensor) -> float:
    return round(float(task.nll(logits.double(), targets)), 6)


def _scores(task: Task, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    calibration = task.calibration(logits, targets)
    return {"ece": calibration.get("ece"), "brier": calibration.get("brier"), "nll": _nll(task, logits, targets)}


def _weights_sha256(model: nn.Module) -> str:
    from visionbench.engine.checkpoint import weights_digest

    return weights_digest(model.state_dict())  # state_digest reads each tensor from its device itself


def _config_sha256(run_dir: Path) -> str:
    from visionbench.utils.bounded import CONFIG_BYTES, read_bytes

    return hashlib.sha256(read_bytes(run_dir / layout.CONFIG, layout.CONFIG, CONFIG_BYTES)).hexdigest()


def use_temperature(run: LoadedRun, run_dir: Path, weights: str) -> str | None:
    """Set `run.temperature` from the run's temperature file for `weights`, when there is one; returns the line
    that says so (None without a file).

    Raises:
        UserError: a file that is not what `eval --calibrate` writes, or one fitted for other weights or another
            config (one line naming the file).
    """
    from visionbench.tasks.calibration import TEMPERATURE_RANGE
    from visionbench.utils.io import read_json

    path = run_dir / layout.temperature(weights)
    if not (path.exists() or path.is_symlink()):
        return None
    record = read_json(path, what=path.name)
    temperature = record.get("temperature") if isinstance(record, dict) else None
    low, high = TEMPERATURE_RANGE
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and low <= temperature <= high):
        raise UserError(f"{path}: expected a temperature from {low:g} to {high:g}, as `eval --calibrate` writes")
    if record.get("fitted_on") != FITTED_ON:
        raise UserError(f"{path}: expected a temperature fitted on the {FITTED_ON} split, as `eval --calibrate` writes")
    check_calibratable(run.task)
    again = f"run `visionbench eval {run_dir} --calibrate` again (or delete the file)"
    if record.get("weights_sha256") != _weights_sha256(run.model):
        raise UserError(f"{path}: fitted for other weights than the run's {weights} weights now; {again}")
    if record.get("config_sha256") != _config_sha256(run_dir):
        raise UserError(f"{path}: fitted for another {layout.CONFIG} than the run's now; {again}")
    run.temperature = float(temperature)
    return f"logits divided by the temperature {temperature:.4g} fitted on the {FITTED_ON} split ({path.name})"
