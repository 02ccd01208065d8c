"""Learning-rate schedules and optimizer parameter groups."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench.config import OptimConfig
from visionbench.engine.optim import build_optimizer
from visionbench.engine.schedule import build_scheduler, schedule_fn


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["constant", "cosine", "one_cycle", "step"]),
    steps=st.integers(1, 200),
    epochs=st.integers(1, 20),
    warmup=st.floats(0, 5),
    floor=st.floats(0, 1),
)
def test_schedules_stay_within_bounds(name, steps, epochs, warmup, floor):
    cfg = OptimConfig(schedule=name, warmup_epochs=warmup, min_lr_factor=floor, step_epochs=[1.0, 2.0])
    fn = schedule_fn(cfg, steps, epochs)
    values = [fn(s) for s in range(steps * epochs + 1)]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values), (name, min(values), max(values))


def test_warmup_then_cosine_reaches_floor():
    cfg = OptimConfig(schedule="cosine", warmup_epochs=1, min_lr_factor=0.1)
    fn = schedule_fn(cfg, steps_per_epoch=10, epochs=5)
    assert fn(0) == pytest.approx(0.1) and fn(9) == pytest.approx(1.0)
    assert fn(50) == pytest.approx(0.1)


def test_step_schedule_decays_at_milestones():
    fn = schedule_fn(OptimConfig(schedule="step", step_epochs=[2], step_gamma=0.5), steps_per_epoch=10, epochs=4)
    assert fn(19) == 1.0 and fn(20) == 0.5


def test_no_decay_on_norms_and_biases_and_scaled_lr():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.01, norm_bias_lr_scale=4.0))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and len(decay["params"]) == 1  # the conv weight only
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3
    sched = build_scheduler(opt, OptimConfig(lr=0.1, schedule="constant"), 10, 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.4])
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.4])
