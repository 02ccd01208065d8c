"""Attributions beyond shapes: the model-randomisation sanity check, IG completeness, batching, hooks on error,
and `visionbench explain` on a trained run (grids, the report link, bad input).

The registry is the test matrix: every registered method runs on the trained CNN, or on a tiny ViT where it refuses
the CNN (attention rollout), so a new method is tested by registering it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import visionbench.analysis.attribution
from visionbench import layout
from visionbench.analysis.attribution import ATTRIBUTIONS, attribute, integrated_gradients, to_maps
from visionbench.cli.main import main
from visionbench.config import config_from_raw
from visionbench.models import create_model

BASE = {
    "data": {"name": "synthetic", "val_fraction": 0.2, "kwargs": {"num_classes": 4, "n_train": 512, "n_test": 64,
                                                                  "channels": 1, "size": 28}},
    "model": {"name": "small_cnn"},
    "trainer": {"epochs": 4, "batch_size": 64, "checkpoint_every_minutes": None, "progress": "lines"},
    "optim": {"lr": 0.05},
}  # fmt: skip
METHODS = ATTRIBUTIONS.list()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from visionbench.engine.train import train

    raw = json.loads(json.dumps(BASE))
    raw["trainer"]["out_dir"] = str(tmp_path_factory.mktemp("runs"))
    return train(config_from_raw(raw, experiment="explain"))


@pytest.fixture(scope="module")
def loaded(trained_run):
    from visionbench.engine.inference import load_run

    return load_run(trained_run)


def _images(n: int = 8, side: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def _test_images(loaded, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    from visionbench.data import build_datasets
    from visionbench.engine.assembly import eval_loader

    data = build_datasets(loaded.cfg.data)
    x, y = next(iter(eval_loader(data, "test", loaded.cfg, torch.device("cpu"))))
    return x[:n].float().contiguous(), y[:n]


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit", 4, in_chans=1, img_size=(28, 28), patch_size=4, embed_dim=32, depth=2, num_heads=2)


def _model_for(method: str, cnn: nn.Module) -> nn.Module:
    """`cnn`, or a tiny ViT where the method refuses it."""
    return cnn if ATTRIBUTIONS.get(method).applies_to(cnn) else _tiny_vit().eval()


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


# --- Adebayo et al. (NeurIPS 2018): maps must depend on the learned weights --------------------------------------


@pytest.mark.parametrize("method", ["saliency", "gradcam"])
def test_model_randomisation_changes_the_maps(loaded, method):
    images, targets = _test_images(loaded)
    trained = to_maps(attribute(loaded.model, images, targets, method))
    randomised = create_model(loaded.cfg.model.name, 4, in_chans=1, img_size=(28, 28))
    torch.manual_seed(123)
    for m in randomised.modules():  # re-initialise every layer of the trained architecture
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    random_maps = to_maps(attribute(randomised.eval(), images, targets, method))
    rhos = [spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(trained, random_maps, strict=True)]
    rho = float(torch.tensor(rhos).nan_to_num(0.0).abs().mean())
    print(f"{method}: mean |Spearman rank correlation| trained vs re-initialised = {rho:.3f}")
    assert rho < 0.5, f"{method} maps barely change when the weights are randomised (|rho| {rho:.3f})"


# --- integrated gradients: completeness ---------------------------------------------------------------------------


def test_integrated_gradients_sum_to_the_output_difference(loaded):
    images, targets = _test_images(loaded, 8)
    attributions = attribute(loaded.model, images, targets, "integrated_gradients")
    with torch.no_grad():
        out = loaded.model(images).gather(1, targets[:, None])[:, 0]
        base = loaded.model(torch.zeros_like(images)).gather(1, targets[:, None])[:, 0]
    total = attributions.flatten(1).sum(1)
    diff = out - base
    error = (total - diff).abs()
    assert (error <= 0.02 * diff.abs() + 1e-3).all(), (
        f"IG with {integrated_gradients.STEPS} steps: sums {total.tolist()} vs output differences {diff.tolist()}"
    )


# --- batching, ranges, hooks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [m for m in METHODS if not ATTRIBUTIONS.get(m).stochastic])  # noise per batch
def test_batched_and_unbatched_attributions_are_equal(loaded, method):
    model = _model_for(method, loaded.model)
    images, targets = _images(6), torch.tensor([0, 1, 2, 3, 0, 1])
    whole = attribute(model, images, targets, method, batch_size=6)
    one_by_one = attribute(model, images, targets, method, batch_size=1)
    torch.testing.assert_close(whole, one_by_one, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_maps_have_the_input_size_and_lie_in_0_1(loaded, method):
    model = _model_for(method, loaded.model)
    maps = to_maps(attribute(model, _images(5), torch.tensor([0, 1, 2, 3, 0]), method, batch_size=2))
    assert maps.shape == (5, 28, 28)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("method", METHODS)
def test_attributions_repeat_exactly_under_the_same_seed(loaded, method):
    model = _model_for(method, loaded.model)
    images, targets = _images(4), torch.tensor([0, 1, 2, 3])
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(attribute(model, images, targets, method, batch_size=2))
    assert torch.isfinite(runs[0]).all(), f"{method} gives non-finite attributions"
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0, msg=f"{method} differs between two seeded calls")
    assert torch.equal(images, _images(4)), f"{method} changed its input images"


def test_every_module_of_the_package_registers_a_method():
    package = Path(visionbench.analysis.attribution.__file__).parent
    registered = {ATTRIBUTIONS.get(name).__module__ for name in METHODS}
    for path in sorted(package.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = f"visionbench.analysis.attribution.{path.stem}"
        importlib.import_module(module)
        assert module in registered, f"{path.name} registers no method (missing @ATTRIBUTIONS.register, or the import?)"


def test_explain_help_names_every_registered_method(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # the help on one line
    assert main(["explain", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ", ".join(METHODS) in out, out


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside the model")


@pytest.mark.parametrize("method", METHODS)
def test_hooks_removed_when_the_model_raises(method):
    model = _model_for(method, create_model("small_cnn", 4, in_chans=1, img_size=(28, 28)).eval())
    setattr(model, "head" if hasattr(model, "head") else "fc", _Boom())  # the classifier: after the CAM layer
    fused = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    with pytest.raises(RuntimeError, match="boom inside the model"):
        attribute(model, _images(2), torch.tensor([0, 1]), method)
    assert _hooks(model) == 0, f"{method} left hooks on the model"
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused


# --- the command ---------------------------------------------------------------------------------------------------


def test_explain_writes_grids_that_the_report_shows(trained_run, capsys):
    assert main(["explain", str(trained_run), "--method", "gradcam", "--n", "4"]) == 0
    out_dir = trained_run / layout.EXPLAIN / "gradcam-test"
    panels = json.loads((out_dir / "panels.json").read_text())
    assert set(panels) == {"correct", "wrong"} and len(panels["correct"]) == 4
    assert (out_dir / "correct.png").stat().st_size > 1000
    assert main(["explain", str(trained_run), "--method", "saliency", "--n", "2", "--classes", "class_1"]) == 0
    assert (trained_run / layout.EXPLAIN / "saliency-test" / "class-class_1.png").is_file()
    assert main(["report", str(trained_run)]) == 0
    html = (trained_run / "report.html").read_text()
    assert "explain/gradcam-test/correct.png" in html and "explain/saliency-test/class-class_1.png" in html


def test_explain_bad_input_is_one_line_and_exit_2(trained_run, tmp_path, capsys):
    cases = [
        (["--method", "attention_rollout"], "has no attention layers"),
        (["--method", "gradcam", "--classes", "sandal"], "--classes: no class 'sandal'"),
        (["--method", "lime"], f"--method 'lime': expected one of {', '.join(METHODS)}"),
    ]
    for args, expected in cases:
        assert main(["explain", str(trained_run), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / layout.CONFIG).write_text((trained_run / layout.CONFIG).read_text())
    assert main(["explain", str(empty), "--method", "saliency"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(empty) in err[0], err


def _tiny_cvt() -> nn.Module:
    torch.manual_seed(0)
    return create_model("cvt", 4, in_chans=1, img_size=(28, 28), dims=(16, 32, 32), heads=(1, 2, 2), depths=(1, 1, 2))


@pytest.mark.parametrize("build", [_tiny_vit, _tiny_cvt], ids=["vit", "cvt"])
def test_attention_rollout_on_token_models(build):
    model = build().eval()
    images, targets = _images(4), torch.zeros(4, dtype=torch.long)
    with torch.no_grad():  # the explicit attention rollout switches to computes what the fused kernel does
        fused_out = model(images)
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        explicit_out = model(images)
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = True
    torch.testing.assert_close(fused_out, explicit_out, rtol=1e-4, atol=1e-5)
    maps = attribute(model, images, targets, "attention_rollout", batch_size=4)
    torch.testing.assert_close(maps, attribute(model, images, targets, "attention_rollout", batch_size=1))
    assert maps.shape == (4, 28, 28) and maps.min() >= 0 and maps.max() <= 1
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")) and _hooks(model) == 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("build", [_tiny_vit, _tiny_cvt], ids=["vit", "cvt"])
def test_grad_cam_on_token_models_needs_no_reshape_from_the_user(build, method):
    """The tokens at cam_layer (B, 1 + h·w, D) become a (B, D, h, w) map from the model's declared layout."""
    model = build().eval()
    images, targets = _images(4), torch.tensor([0, 1, 2, 3])
    maps = attribute(model, images, targets, method, batch_size=4)
    assert maps.shape == (4, 28, 28) and maps.min() >= 0 and maps.max() <= 1 and maps.flatten(1).amax(1).gt(0).all()
    torch.testing.assert_close(maps, attribute(model, images, targets, method, batch_size=1), rtol=1e-4, atol=1e-5)
    assert _hooks(model) == 0


def test_grid_files_of_class_groups_stay_in_their_folder_whatever_the_class_name(tmp_path):
    """Class names are data: `../x`, `a/b` or a leading dot must not climb out of the folder or hide the file."""
    from visionbench.analysis.explain import Panel, save_grids

    names = ["../escape", "a/b", "a_b", ".hidden", "$\\foo{$", "class-ok"]
    groups = {f"class-{n}": [Panel(0, 0, f"#0 {n}")] for n in names}
    maps = {g: torch.rand(1, 8, 8) for g in groups}
    out = tmp_path / layout.EXPLAIN / "saliency-test"
    paths = save_grids(out, torch.rand(1, 1, 8, 8), groups, maps, "saliency")
    assert len(paths) == len(names) == len(set(paths)), paths
    for path in paths:
        assert path.parent == out and path.is_file() and not path.name.startswith("."), path
    assert not (tmp_path / layout.EXPLAIN / "escape.png").exists() and sorted(tmp_path.rglob("*.png")) == sorted(paths)
