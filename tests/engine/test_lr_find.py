"""`visionbench lr-find`: the sweep restores every state exactly, is exponential, stops on divergence, writes its
files; the suggestion rules on synthetic curves; bad input through the CLI."""

from __future__ import annotations

import copy
import csv
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench import layout
from visionbench.cli.main import main
from visionbench.config import load_config
from visionbench.data import LoaderSpec, build_datasets, build_loader
from visionbench.engine import lr_find as lf
from visionbench.engine.assembly import create_run_model
from visionbench.engine.optim import build_optimizer
from visionbench.engine.runtime import seed_everything
from visionbench.engine.transfer import head_parameter_names
from visionbench.report.plots import plot_lr_find
from visionbench.tasks import build_task

SMOKE = "configs/smoke/synthetic.yaml"


def _cfg(tmp_path, *sets: str):
    return load_config(SMOKE, ["trainer.device=cpu", f"trainer.out_dir={tmp_path}", *sets], experiment="smoke")


def _setup(cfg):
    """Model, task, optimizer (with per-group lr scales) and train loader of `cfg`, as `train` builds them."""
    seed_everything(cfg.trainer.seed)
    data = build_datasets(cfg.data)
    task = build_task(cfg.task, data.info)
    model = create_run_model(cfg, data.info)
    optimizer = build_optimizer(model, cfg.optim, head_parameter_names(model))
    spec = LoaderSpec(cfg.trainer.batch_size, train=True, seed=cfg.trainer.seed)
    loader = build_loader(data, "train", cfg.data, torch.device("cpu"), spec)
    return model, task, optimizer, loader


def _train_steps(model, task, optimizer, loader, n: int) -> None:
    model.train()
    for _, (images, targets) in zip(range(n), loader.epoch(0), strict=False):
        task.loss(model(images), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _tensors(obj, prefix=""):
    """Every tensor in a nested state dict, by path (non-tensors by path too, for equality)."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _tensors(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _tensors(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def _assert_same(before: dict, after: dict, what: str) -> None:
    assert before.keys() == after.keys(), f"{what}: keys differ"
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), f"{what}: {key} changed"
        else:
            assert value == after[key], f"{what}: {key} changed ({value!r} -> {after[key]!r})"


@pytest.mark.parametrize(
    "sets",
    [
        ["model.name=small_cnn", "model.kwargs.drop_rate=0.3", "optim.name=sgd", "optim.backbone_lr_scale=0.1"],
        ["model.name=resnet_cfg_small", "optim.name=adamw", "optim.lr=0.003", "optim.backbone_lr_scale=0.5"],
    ],
    ids=["small_cnn-sgd-dropout", "resnet_cfg_small-adamw-bn"],
)
def test_sweep_restores_weights_buffers_optimizer_state_lr_and_rng_exactly(tmp_path, sets):
    cfg = _cfg(tmp_path, *sets)
    model, task, optimizer, loader = _setup(cfg)
    _train_steps(model, task, optimizer, loader, 3)  # momentum / Adam moments exist before the sweep
    assert optimizer.state, "the optimizer should have state to restore"
    lrs_before = [g["lr"] for g in optimizer.param_groups]
    assert len(set(lrs_before)) > 1, "backbone_lr_scale should give the groups different learning rates"
    model_before = copy.deepcopy(model.state_dict())
    optim_before = copy.deepcopy(optimizer.state_dict())
    rng_before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    params = list(model.parameters())

    curve = lf.sweep(
        model, task, optimizer, loader, lf.exponential_lrs(1e-4, 1e3, 40), cfg.trainer, torch.device("cpu")
    )
    assert len(curve.lrs) >= 2

    _assert_same(_tensors(model_before), _tensors(model.state_dict()), "model")
    _assert_same(_tensors(optim_before), _tensors(optimizer.state_dict()), "optimizer")
    assert [g["lr"] for g in optimizer.param_groups] == lrs_before
    assert torch.equal(torch.get_rng_state(), rng_before[0]), "torch RNG not restored"
    assert random.getstate() == rng_before[1], "python RNG not restored"
    assert np.array_equal(np.random.get_state()[1], rng_before[2]), "numpy RNG not restored"
    assert all(p.grad is None for p in model.parameters()), "gradients not restored"
    assert model.training
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in params}, "the optimizer must still hold the model's own parameters"
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))


def test_training_after_the_sweep_equals_training_without_it(tmp_path):
    cfg = _cfg(tmp_path, "model.kwargs.drop_rate=0.2")
    runs = []
    for with_sweep in (False, True):
        model, task, optimizer, loader = _setup(cfg)
        if with_sweep:
            lf.sweep(model, task, optimizer, loader, lf.exponential_lrs(1e-3, 10, 20), cfg.trainer, torch.device("cpu"))
        _train_steps(model, task, optimizer, loader, 4)
        runs.append(model.state_dict())
    _assert_same(_tensors(runs[0]), _tensors(runs[1]), "weights after 4 training steps")


def test_sweep_is_exponential_and_keeps_group_lr_ratios(tmp_path):
    cfg = _cfg(tmp_path, "optim.backbone_lr_scale=0.25")
    model, task, optimizer, loader = _setup(cfg)
    seen = []
    original_step = optimizer.step

    def spy(*args, **kwargs):
        seen.append([(g["lr"], g["lr_scale"]) for g in optimizer.param_groups])
        return original_step(*args, **kwargs)

    optimizer.step = spy
    lrs = lf.exponential_lrs(1e-5, 1e-1, 9)
    curve = lf.sweep(model, task, optimizer, loader, lrs, cfg.trainer, torch.device("cpu"))
    assert curve.stop == "end" and curve.lrs == lrs
    torch.testing.assert_close(torch.tensor(lrs, dtype=torch.float64), torch.logspace(-5, -1, 9, dtype=torch.float64))
    assert lrs[0] == 1e-5 and lrs[-1] == 1e-1
    ratios = np.diff(np.log(lrs))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9, err_msg="the lr should grow by a constant factor")
    assert len(seen) == 9
    for lr, groups in zip(lrs, seen, strict=True):
        for group_lr, scale in groups:
            assert group_lr == pytest.approx(lr * scale, rel=1e-12), "each group keeps its lr_scale ratio"
    assert {scale for _, scale in seen[0]} == {0.25, 1.0}


def test_sweep_stops_when_the_smoothed_loss_diverges(tmp_path):
    cfg = _cfg(tmp_path)
    model, task, optimizer, loader = _setup(cfg)
    lrs = lf.exponential_lrs(1e-3, 1e6, 80)
    curve = lf.sweep(model, task, optimizer, loader, lrs, cfg.trainer, torch.device("cpu"))
    assert curve.stop in ("diverged", "non-finite") and len(curve.lrs) < len(lrs), curve.stop
    assert curve.lrs == lrs[: len(curve.lrs)]
    last = curve.smoothed[-1]
    assert not math.isfinite(last) or last > lf.DIVERGE_FACTOR * min(curve.smoothed[:-1])
    assert curve.smoothed[:-1] == pytest.approx(lf.smooth(curve.losses, lf.BETA)[:-1])


def test_smooth_is_a_bias_corrected_moving_average():
    assert lf.smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0]), "a constant stays constant"
    assert lf.smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])


def test_cli_writes_curve_and_plot_and_prints_suggestions(tmp_path, capsys):
    sets = ["--set", f"trainer.out_dir={tmp_path}", "--set", "trainer.device=cpu"]
    code = main(["lr-find", SMOKE, *sets, "--steps", "40", "--start-lr", "1e-5", "--end-lr", "100", "--seed", "1"])
    assert code == 0
    (folder,) = (tmp_path / "synthetic").glob("lr_find-*-small_cnn-synthetic")
    out = capsys.readouterr().out
    suggestions = {}
    for line in out.splitlines():
        name, _, rest = line.partition(":")
        if name in ("valley", "steepest", "min/10"):
            suggestions[name] = float(rest.split()[0])
    assert suggestions.keys() == {"valley", "steepest", "min/10"}, out
    assert "(suggested optim.lr)" in next(line for line in out.splitlines() if line.startswith(lf.MAIN))
    for name in ("valley", "steepest"):
        assert 1e-5 <= suggestions[name] <= 100, (name, suggestions[name])
    assert 1e-6 <= suggestions["min/10"] <= 10
    assert f"curve: {folder / 'lr_find.csv'}" in out and f"plot: {folder / 'lr_find.png'}" in out

    with open(folder / layout.LR_FIND_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["lr", "loss", "smoothed_loss"]
    assert 2 <= len(rows) <= 40 and float(rows[0]["lr"]) == 1e-5
    assert (folder / layout.LR_FIND_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(folder / layout.CONFIG).trainer.seed == 1, "the resolved config, --seed included"
    assert not list(tmp_path.glob(f"*/*/{layout.SUMMARY}")), "an lr-find folder is not a run for `report`"


def test_lr_find_writes_into_out_and_its_suggestions_lie_in_the_range(tmp_path):
    cfg = _cfg(tmp_path)
    result = lf.lr_find(cfg, start_lr=1e-4, end_lr=10.0, steps=30, out=tmp_path / "here")
    result.files["png"] = plot_lr_find(tmp_path / "here", "small_cnn on synthetic")  # as the CLI draws it
    assert set(result.files) == {"csv", "png", "json"}
    assert all(p.is_file() and p.parent == tmp_path / "here" for p in result.files.values())
    for name in ("valley", "steepest"):
        assert 1e-4 <= result.suggestions[name] <= 10.0
        assert result.suggestions[name] in result.curve.lrs
    assert [p for p in tmp_path.iterdir()] == [tmp_path / "here"], "nothing written besides --out"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "optim.lrr=0.1"], "unknown key optim.lrr"),
        (["--start-lr", "1", "--end-lr", "0.1"], "--end-lr"),
        (["--start-lr", "0.1", "--end-lr", "0.1"], "--end-lr"),
        (["--start-lr", "0"], "--start-lr"),
        (["--steps", "1"], "--steps"),
        (["--beta", "1"], "--beta"),
        (["--steps", "many"], "--steps"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, expected):
    code = main(["lr-find", SMOKE, "--set", f"trainer.out_dir={tmp_path}", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and expected in err, err
    assert not any(tmp_path.iterdir()), "bad input must not write anything"


def test_cli_out_that_is_a_file_is_refused_before_the_sweep(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main(["lr-find", SMOKE, "--set", f"trainer.out_dir={tmp_path}", "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {taken}: ") and len(err.strip().splitlines()) == 1, err
    assert taken.read_text() == "mine" and sorted(tmp_path.iterdir()) == [taken]


# --- the suggestion rules on synthetic curves ---------------------------------------------------------------


def _u_curve(x: np.ndarray, center: float, width: float, rise_at: float) -> np.ndarray:
    """A plateau at 2.3, a logistic descent of 1.5 centred at `center` (steepest there), then a quadratic rise
    from `rise_at` on: the shape of an lr range test in log10(lr)."""
    descent = 1.5 / (1 + np.exp(-(x - center) / width))
    return 2.3 - descent + 4.0 * np.clip(x - rise_at, 0, None) ** 2


@settings(max_examples=60, deadline=None)
@given(
    center=st.floats(-5.0, -1.0),
    width=st.floats(0.1, 0.25),  # the descent is complete (>= 99.7 %) before the rise begins
    gap=st.floats(1.5, 3.0),
    per_decade=st.integers(8, 40),
)
def test_steepest_and_valley_are_where_a_known_curve_puts_them(center, width, gap, per_decade):
    x = np.arange(-7.0, 1.0 + 1e-9, 1.0 / per_decade)
    y = _u_curve(x, center, width, rise_at=center + gap)
    y_copy = y.copy()
    lrs = list(10**x)
    s = lf.suggest(lrs, list(y), beta=0.9)  # slopes fitted over 5 points on either side, inside the descent
    # a symmetric window over a symmetric descent: the fitted slope is steepest at the centre, up to the grid step
    assert abs(math.log10(s["steepest"]) - center) <= 1.0 / per_decade + 1e-9, (s, center)
    onset = center - width * math.log(9)  # where 10 % of the descent is done
    minimum = x[int(np.argmin(y))]
    assert abs(math.log10(s["valley"]) - (onset + minimum) / 2) <= 1.0 / per_decade + 0.01, (s, onset, minimum)
    assert s["min/10"] == pytest.approx(10**minimum / 10)
    np.testing.assert_array_equal(y, y_copy, err_msg="suggest must not modify its input")


@settings(max_examples=100, deadline=None)
@given(
    losses=st.lists(st.floats(0.0, 100.0), min_size=2, max_size=60),
    start_exp=st.floats(-8.0, 0.0),
    decades=st.floats(0.5, 9.0),
)
def test_suggestions_are_swept_rates_for_any_curve(losses, start_exp, decades):
    lrs = lf.exponential_lrs(10**start_exp, 10 ** (start_exp + decades), len(losses))
    s = lf.suggest(lrs, losses)
    assert s["valley"] in lrs and s["steepest"] in lrs
    assert s["min/10"] == lrs[int(np.argmin(losses))] / 10
    # scaling the loss by a power of two is exact in floating point: no suggestion may move
    assert lf.suggest(lrs, [2.0 * v for v in losses]) == s


def test_suggestions_ignore_points_after_a_non_finite_loss():
    lrs = lf.exponential_lrs(1e-4, 1.0, 50)
    y = list(_u_curve(np.log10(lrs), -2.0, 0.2, -0.5))
    s = lf.suggest(lrs, y)
    assert lf.suggest(lrs + [2.0, 4.0], y + [math.nan, 1e-9]) == s
