"""Optimizers by name: Yogi against the paper's formulas, and timm's optimizers through `build_optimizer`."""

from __future__ import annotations

import io
import math

import pytest
import torch

from visionbench.config import OptimConfig
from visionbench.engine.optim import TIMM_OPTIMIZERS, build_optimizer
from visionbench.engine.yogi import Yogi
from visionbench.errors import UserError
from visionbench.registry import OPTIMIZERS

# fixed gradients of a 3-element parameter over 4 steps; with v_0 = 1e-6 and β2 = 0.5, v - g² changes sign:
# element 0 grows then shrinks (sign -1, -1, +1, +1), element 1 alternates, element 2 gets a zero gradient first
GRADS = [[1.0, -0.5, 0.0], [0.8, 2.0, 0.3], [0.01, -0.1, -0.2], [-0.05, 3.0, 0.0]]


def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def _yogi_by_hand(x, lr, beta1, beta2, eps, v0, weight_decay=0.0, bias_correction=True):
    """Algorithm 2 of Zaheer et al. (2018) in Python floats, one coordinate at a time, plus Adam's bias correction."""
    x, m, v = list(x), [0.0] * len(x), [v0] * len(x)
    history = []
    for t, grads in enumerate(GRADS, start=1):
        for i, g in enumerate(grads):
            g = g + weight_decay * x[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = v[i] - (1 - beta2) * _sign(v[i] - g * g) * g * g
            if bias_correction:
                x[i] -= lr / (1 - beta1**t) * m[i] / (math.sqrt(v[i] / (1 - beta2**t)) + eps)
            else:
                x[i] -= lr * m[i] / (math.sqrt(v[i]) + eps)
        history.append((list(x), list(m), list(v)))
    return history


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_yogi_matches_paper_formulas_step_by_step(bias_correction, weight_decay):
    x0, kw = [0.5, -1.0, 2.0], dict(lr=0.1, betas=(0.9, 0.5), eps=1e-3, initial_accumulator=1e-6)
    p = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    opt = Yogi([p], weight_decay=weight_decay, bias_correction=bias_correction, **kw)
    expected = _yogi_by_hand(
        x0, kw["lr"], *kw["betas"], kw["eps"], kw["initial_accumulator"], weight_decay, bias_correction
    )
    signs = []
    for t, (grads, (x, m, v)) in enumerate(zip(GRADS, expected, strict=True), start=1):
        g = torch.tensor(grads, dtype=torch.float64)
        signs.append(torch.sign(opt.state[p]["exp_avg_sq"] - g * g).tolist() if t > 1 else None)
        p.grad = g
        opt.step()
        state = opt.state[p]
        assert state["step"] == t
        for name, got, want in [("x", p, x), ("m", state["exp_avg"], m), ("v", state["exp_avg_sq"], v)]:
            want = torch.tensor(want, dtype=torch.float64)
            message = lambda s, name=name, t=t: f"{name} after step {t}: {s}"  # noqa: E731
            torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-6, msg=message)
    if weight_decay == 0.0:  # the gradients were chosen so that v - g² takes both signs on elements 0 and 1
        assert {s[0] for s in signs[1:]} == {-1.0, 1.0} and {s[1] for s in signs[1:]} == {-1.0, 1.0}, signs


def test_yogi_decoupled_weight_decay_shrinks_weights_without_touching_moments():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Yogi([p], lr=0.1, weight_decay=0.5, decoupled_weight_decay=True)
    p.grad = torch.zeros(2)
    opt.step()  # zero gradient: m stays 0, so the only change is the decay
    torch.testing.assert_close(p.detach(), torch.tensor([0.95, -1.9]))
    assert opt.state[p]["exp_avg"].abs().max() == 0


def test_yogi_minimises_a_quadratic():
    torch.manual_seed(0)
    target = torch.tensor([1.0, -2.0, 3.0, 0.5])
    scales = torch.tensor([1.0, 10.0, 0.1, 3.0])  # badly conditioned on purpose
    x = torch.nn.Parameter(torch.zeros(4))
    opt = Yogi([x], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        loss = (scales * (x - target) ** 2).sum()
        loss.backward()
        with torch.no_grad():  # step must work (and not track history) inside no_grad too
            opt.step()
    torch.testing.assert_close(x.detach(), target, atol=2e-2, rtol=0, msg="Yogi did not reach the minimum")
    assert not x.grad.requires_grad


def test_yogi_param_groups_keep_their_own_lr():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Yogi([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=0.1)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert (a < 1).all(), "the group with lr 0.1 must move"
    torch.testing.assert_close(b.detach(), torch.ones(2), msg="the group with lr 0 must not move")


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2)
    )


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6, generator=gen)).square().mean().backward()
        opt.step()


def _reload(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # as checkpoints are read


@pytest.mark.parametrize("name", ["yogi", "lamb"])
def test_state_dict_round_trip_continues_identically(name):
    cfg = OptimConfig(name=name, lr=0.01)
    model = _tiny_model()
    opt = build_optimizer(model, cfg)
    _train(model, opt, 3)
    model_state, opt_state = _reload(model.state_dict()), _reload(opt.state_dict())
    _train(model, opt, 3, seed=2)

    resumed = _tiny_model()
    resumed.load_state_dict(model_state)
    resumed_opt = build_optimizer(resumed, cfg)
    resumed_opt.load_state_dict(opt_state)
    _train(resumed, resumed_opt, 3, seed=2)
    for (key, p), q in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=f"{key} differs after resuming")


def test_timm_names_exist_in_installed_timm():
    import timm.optim

    missing = set(TIMM_OPTIMIZERS) - set(timm.optim.list_optimizers())
    assert not missing, f"timm no longer offers {sorted(missing)}"
    assert {"yogi", *TIMM_OPTIMIZERS} <= set(OPTIMIZERS.list())


@pytest.mark.parametrize("name", TIMM_OPTIMIZERS)
def test_timm_optimizer_builds_and_steps(name):
    model = _tiny_model()
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=1e-2, norm_bias_lr_scale=2.0)
    opt = build_optimizer(model, cfg)
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 2.0], "our param groups must reach the optimizer"
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-2, 0.0]
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, 2)  # two: ADOPT's first step only initialises its second moment
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert any(changed), f"{name}: no parameter moved in two steps"
    assert all(torch.isfinite(p).all() for p in model.parameters()), f"{name}: non-finite parameters"
    opt.load_state_dict(_reload(opt.state_dict()))  # checkpoints hold the state as weights_only tensors


def test_config_eps_and_betas_reach_timm_optimizers():
    opt = build_optimizer(_tiny_model(), OptimConfig(name="lamb", eps=1e-5, betas=[0.8, 0.99]))
    assert opt.param_groups[0]["eps"] == 1e-5 and tuple(opt.param_groups[0]["betas"]) == (0.8, 0.99)
    assert build_optimizer(_tiny_model(), OptimConfig(name="yogi")).param_groups[0]["eps"] == 1e-3


def test_unknown_optimizer_suggests_close_names():
    with pytest.raises(UserError, match=r"unknown optimizer 'lamm'; did you mean .*lamb"):
        build_optimizer(_tiny_model(), OptimConfig(name="lamm"))
