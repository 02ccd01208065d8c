"""Regression task: standardisation undone for metrics, losses, MAE / RMSE / R² against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench.data.base import DatasetInfo
from visionbench.tasks import create_task


def _task(**kwargs):
    return create_task("regression", DatasetInfo("t", "regression", 1, ("y",), (1, 8, 8)), **kwargs)


def _scores(task, logits, targets) -> dict[str, float]:
    metrics = task.metrics()
    metrics.update(logits, targets)
    return {k: float(v) for k, v in metrics.compute().items()}


def test_metrics_match_hand_computed_values_in_the_targets_units():
    train = torch.tensor([[-24.0], [-23.0], [-22.0]])  # mean -23, std 1
    task = _task()
    task.fit_targets(train)
    assert task.stats() == {"target_mean": [-23.0], "target_std": [1.0]}
    true = [-23.5, -22.5, -23.0, -22.0]
    pred = [-23.0, -22.0, -23.5, -22.5]  # errors 0.5 each way
    logits = (torch.tensor(pred) + 23.0).reshape(-1, 1)  # standardised outputs
    s = _scores(task, logits, torch.tensor(true).reshape(-1, 1))
    mean = sum(true) / 4
    r2 = 1 - sum((t - p) ** 2 for t, p in zip(true, pred, strict=True)) / sum((t - mean) ** 2 for t in true)
    assert s["mae"] == pytest.approx(0.5)
    assert s["rmse"] == pytest.approx(0.5)
    assert s["r2"] == pytest.approx(r2)
    assert s["loss"] == pytest.approx(0.5)  # L1 in standardised units (std 1)
    columns = task.artifacts(logits, torch.tensor(true).reshape(-1, 1))["predictions"]
    assert columns == {"true": true, "pred": pred}


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("l1", 1.25),
        ("mse", (0.25 + 4.0) / 2),
        ("rmse", ((0.25 + 4.0) / 2) ** 0.5),
        ("huber", (0.5 * 0.25 + (2.0 - 0.5)) / 2),
    ],
)
def test_losses_on_standardised_targets(loss, expected):
    task = _task(loss=loss)
    task.fit_targets(torch.tensor([[10.0], [14.0]]))  # mean 12, std 2*sqrt(2)
    targets = torch.tensor([[12.0], [12.0]])
    logits = torch.tensor([[0.5], [2.0]])  # standardised predictions 0.5 and 2 (target z = 0)
    assert float(task.loss(logits, targets)) == pytest.approx(expected)


def test_rmse_loss_has_a_finite_gradient_at_zero_error():
    task = _task(loss="rmse", standardize_targets=False)
    logits = torch.tensor([[-23.0], [-22.5]], requires_grad=True)
    task.loss(logits, logits.detach().clone()).backward()
    assert torch.isfinite(logits.grad).all(), logits.grad


@settings(max_examples=25, deadline=None)
@given(
    mean=st.floats(-1e3, 1e3),
    scale=st.floats(1e-2, 1e3),
    seed=st.integers(0, 10**6),
)
def test_metrics_do_not_depend_on_standardisation(mean, scale, seed):
    g = torch.Generator().manual_seed(seed)
    train = (torch.randn(32, 1, generator=g) * scale + mean).double().float()
    true = (torch.randn(16, 1, generator=g) * scale + mean).float()
    pred = true + torch.randn(16, 1, generator=g) * scale * 0.3
    plain, standard = _task(standardize_targets=False), _task()
    plain.fit_targets(train)
    standard.fit_targets(train)
    a = _scores(plain, pred, true)
    b = _scores(standard, (pred - standard.target_mean) / standard.target_std, true)
    for key in ("mae", "rmse", "r2"):
        assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4 * scale), key


def test_a_single_value_gives_nan_r2_not_an_error():
    task = _task()
    task.fit_targets(torch.tensor([[-24.0], [-23.0], [-22.0]]))  # mean -23, std 1
    s = _scores(task, torch.tensor([[0.5]]), torch.tensor([[-23.0]]))
    assert s["mae"] == pytest.approx(0.5) and s["rmse"] == pytest.approx(0.5)
    assert s["r2"] != s["r2"], "R² of one value is undefined: NaN"
