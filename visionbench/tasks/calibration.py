"""Calibration of predicted probabilities: expected calibration error (ECE), the Brier score, the reliability
diagram's bins, and the temperature of temperature scaling.

ECE is torchmetrics' `CalibrationError` (l1 norm, `N_BINS` equal-width bins of [0, 1]): the mean over bins, weighted
by their share of the predictions, of |observed frequency - mean predicted probability| (Naeini et al. 2015,
"Obtaining Well Calibrated Probabilities Using Bayesian Binning", AAAI). For single-label classification it is the
multiclass top-label ECE: the confidence is the top-1 probability and the observation whether the top-1 class is the
true one (Guo et al. 2017). For multi-label classification it is the binary ECE over every (image, label) pair whose
target is not ignored: each sigmoid is a prediction that its label is present.

The Brier score (Brier 1950, "Verification of forecasts expressed in terms of probability") is the mean squared
distance of the probabilities to the outcomes: for a single-label image the sum over classes of (p - onehot)^2
(0 best, 2 worst), for multi-label the mean of (p - y)^2 over the kept (image, label) pairs (0 best, 1 worst).
torchmetrics has no Brier score.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", ICML, Sec. 4.2) divides every
logit by one scalar T > 0 fitted on held-out data by minimising the negative log-likelihood; T > 1 softens an
over-confident model. The decisions of a softmax (argmax) do not change; a sigmoid's at a threshold other than 0.5
do (sigmoid(z / T) > t at z > T logit(t)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from visionbench.errors import UserError

N_BINS = 15  # Guo et al.'s bins, and the common choice since; torchmetrics' default too
# The fitted temperature must lie in here: beyond, the NLL keeps falling towards T -> 0 (a split the model separates
# perfectly) or T -> infinity (outputs that carry no information), and no finite T is the minimum
TEMPERATURE_RANGE = (1e-2, 1e2)


def multiclass_calibration(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Top-label ECE, Brier score and reliability bins of (N, C) softmax probabilities and (N,) class indices."""
    from torchmetrics.classification import MulticlassCalibrationError  # here: start-up (tasks/_metrics.py)

    if not len(probs):
        return {}
    probs, targets = probs.double(), targets.long()
    ece = MulticlassCalibrationError(probs.shape[1], n_bins=N_BINS, norm="l1")(probs, targets)
    onehot = torch.nn.functional.one_hot(targets, probs.shape[1]).double()
    confidence, predicted = probs.max(1)
    return {
        "ece": _round(ece),
        "brier": _round(((probs - onehot) ** 2).sum(1).mean()),
        "ece_kind": f"multiclass top-label, {N_BINS} bins",
        "bins": reliability_bins(confidence, (predicted == targets).double()),
    }


def multilabel_calibration(probs: torch.Tensor, targets: torch.Tensor, ignore: int) -> dict[str, Any]:
    """Binary ECE over all labels, Brier score and reliability bins of (N, C) sigmoid probabilities and (N, C)
    targets (1, 0, or `ignore`, which drops the pair out)."""
    from torchmetrics.classification import BinaryCalibrationError

    keep = targets != ignore
    probs, outcomes = probs.double()[keep], targets[keep].double()
    if not len(probs):
        return {}
    return {
        "ece": _round(BinaryCalibrationError(n_bins=N_BINS, norm="l1")(probs, outcomes.long())),
        "brier": _round(((probs - outcomes) ** 2).mean()),
        "ece_kind": f"binary over all labels, {N_BINS} bins",
        "bins": reliability_bins(probs, outcomes),
    }


def reliability_bins(confidence: torch.Tensor, observed: torch.Tensor) -> dict[str, list]:
    """The reliability diagram of predictions with probability `confidence` and outcome `observed` (1 or 0): per
    equal-width bin its bounds, its count, its mean probability and its observed frequency (None when empty).

    torchmetrics bins with `bucketize(right=True)`, so a probability of exactly 1 lands in a 16th bin [1, 1]; here it
    joins the last bin, as a diagram of 15 bins shows it. The ECE reported beside is torchmetrics'."""
    edges = torch.linspace(0, 1, N_BINS + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence.double(), edges, right=True) - 1).clamp(0, N_BINS - 1)
    count = torch.bincount(index, minlength=N_BINS).double()
    mean_conf = torch.zeros(N_BINS, dtype=torch.float64).scatter_add_(0, index, confidence.double()) / count
    frequency = torch.zeros(N_BINS, dtype=torch.float64).scatter_add_(0, index, observed.double()) / count
    return {
        "low": [round(v, 6) for v in edges[:-1].tolist()],
        "high": [round(v, 6) for v in edges[1:].tolist()],
        "count": [int(v) for v in count.tolist()],
        "confidence": [_round(v) for v in mean_conf],
        "observed": [_round(v) for v in frequency],
    }


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, nll: Callable[..., torch.Tensor]) -> float:
    """The temperature T minimising `nll(logits / T, targets)`: L-BFGS on log T (so T stays positive) from T = 1,
    in float64, as Guo et al. fit it on the validation split.

    Raises:
        UserError: no minimum inside `TEMPERATURE_RANGE`: a split the model separates perfectly (every image
            right: the NLL falls as T -> 0), or outputs that carry no information.
    """
    logits = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    with torch.no_grad():  # L-BFGS stops where the NLL of a separated split is ~1e-9, still falling as T shrinks
        falling = nll(logits / (0.9 * temperature), targets) < nll(logits / temperature, targets)
    low, high = TEMPERATURE_RANGE
    if falling or not low <= temperature <= high:  # NaN included
        raise UserError(
            "the validation split's negative log-likelihood has no minimum at a temperature from "
            f"{low:g} to {high:g} (it falls towards T = 0 when the model classifies every image right, towards "
            "infinity when its outputs do not depend on the image); no temperature fitted"
        )
    return temperature


def _round(value: Any) -> float | None:
    """A finite number rounded for JSON; NaN (an empty bin, an empty split) becomes None."""
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None
