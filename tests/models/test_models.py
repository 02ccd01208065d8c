"""The model zoo against the model contract (STYLE.md §5): the registry is the test matrix, as in timm's tests.

Every registered model plus two timm models is built with 1 and 3 input channels at 28×28 and 32×32 (small
widths where the defaults are big) and checked for shape, gradients, head reset, CAM layer, batching and
memory-format invariance. CPU only, random init, nothing downloaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import visionbench.models
from visionbench.errors import UserError
from visionbench.models import count_params, create_model, inspect_model
from visionbench.models.layers import get_act_layer
from visionbench.registry import MODELS

MODEL_NAMES = MODELS.list() + ["timm:resnet18", "timm:mobilenetv2_100"]
# Shrink the models whose defaults are slow on a 2-core CPU; anything else runs with its defaults.
SMALL_KWARGS = {
    "fastnet": dict(widths=(16, 32, 32)),
    "resnet_cfg": dict(channels=(8, 16, 16, 32)),
    "vgg16": dict(classifier="pool"),
    "vgg16_bn": dict(classifier="pool"),
    "vit": dict(embed_dim=32, depth=2, num_heads=2),
    "cnn_vit": dict(conv_widths=(8, 16, 16), embed_dim=32, depth=2, num_heads=2),
    "cnn_t": dict(conv_widths=(8, 16, 16), embed_dim=32, depth=2, num_heads=2),
    "cvt": dict(dims=(16, 32, 32), heads=(1, 2, 2), depths=(1, 1, 2)),
    "cvt_13": dict(dims=(16, 48, 96)),  # CvT-13's heads (1, 3, 6) and depths (1, 2, 10), 16 channels a head
}
INPUTS = [(1, 28), (1, 32), (3, 28), (3, 32)]  # (in_chans, side)
# Sides a model cannot take; it must refuse them with a one-line UserError (tested below).
UNSUPPORTED = {"vgg16": {28}, "vgg16_bn": {28}, "vit_r50_hybrid": {28}}
# ~98M parameters take seconds to build on a CPU: their matrix cases run with -m slow; test_zoo.py builds the
# hybrid once (parameter count, contract) in the default run.
HEAVY = {"vit_r50_hybrid"}


def _params(cases: list[tuple], ids: list[str]) -> list:
    marks = [[pytest.mark.slow] if c[0] in HEAVY else [] for c in cases]
    return [pytest.param(*c, id=i, marks=m) for c, i, m in zip(cases, ids, marks, strict=True)]


CASES = [(n, c, s) for n in MODEL_NAMES for c, s in INPUTS if s not in UNSUPPORTED.get(n, ())]
NUM_OUTPUTS = 5
# Different batch sizes and memory formats may pick different conv kernels: equal up to float32 rounding.
TOL = dict(rtol=1e-4, atol=1e-5)


def _build(name: str, in_chans: int, side: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, NUM_OUTPUTS, in_chans=in_chans, img_size=(side, side), **SMALL_KWARGS.get(name, {}))


def _images(batch: int, in_chans: int, side: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, in_chans, side, side, generator=torch.Generator().manual_seed(seed))


cases = pytest.mark.parametrize("name, in_chans, side", _params(CASES, [f"{n}-{c}x{s}x{s}" for n, c, s in CASES]))
light_matrix = pytest.mark.parametrize("name", _params([(n,) for n in MODEL_NAMES], MODEL_NAMES))


@cases
def test_forward_shape_finite_and_every_trainable_param_gets_grad(name, in_chans, side):
    model = _build(name, in_chans, side).train()
    logits = model(_images(4, in_chans, side))
    assert logits.shape == (4, NUM_OUTPUTS), f"{name} returned {tuple(logits.shape)}"
    assert torch.isfinite(logits).all(), f"{name} returned non-finite logits"
    logits.logsumexp(dim=1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"


@cases
def test_contract_attributes_and_reset_head(name, in_chans, side):
    model = _build(name, in_chans, side).eval()
    x = _images(2, in_chans, side)
    with torch.no_grad():
        features = model.forward_features(x)
        assert model.feature_layout in ("NCHW", "NLC"), f"{name}: feature_layout {model.feature_layout!r}"
        assert features.ndim == (4 if model.feature_layout == "NCHW" else 3), f"{name}: {tuple(features.shape)}"
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (2, model.num_features), f"{name}: num_features {model.num_features}"
        torch.testing.assert_close(model.forward_head(features), model(x), msg=f"{name}: forward != head(features)")
        model.reset_head(7)
        assert model(x).shape == (2, 7), f"{name}: reset_head(7) did not give 7 outputs"


@light_matrix
def test_cam_layer_resolves_to_a_spatial_activation(name):
    model = _build(name, 3, 32).eval()
    layer = model.get_submodule(model.cam_layer)
    seen = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    try:
        with torch.no_grad():
            model(_images(2, 3, 32))
    finally:
        handle.remove()
    spatial = 4 if model.feature_layout == "NCHW" else 3  # a (B, C, H, W) map, or (B, N, C) tokens
    assert len(seen) == 1 and len(seen[0]) == spatial, f"{name}: cam_layer output shapes {seen}"


# The other input sizes of our datasets (64: DeepLense II/III, 150: DeepLense I, 224 and 300: VOC), one channel.
LARGE_SIDES = (64, 150, 224, 300)
LARGE_UNSUPPORTED = {"vit": {150}, "vit_r50_hybrid": {150, 300}}  # the patch (4, 16) must divide the side
LARGE_CASES = [(n, s) for n in MODEL_NAMES for s in LARGE_SIDES if s not in LARGE_UNSUPPORTED.get(n, ())]


@pytest.mark.parametrize("name, side", _params(LARGE_CASES, [f"{n}-{s}" for n, s in LARGE_CASES]))
def test_forward_at_the_larger_dataset_sizes(name, side):
    model = _build(name, 1, side).eval()
    with torch.no_grad():
        logits = model(_images(1, 1, side))
    assert logits.shape == (1, NUM_OUTPUTS) and torch.isfinite(logits).all(), name


@pytest.mark.parametrize("name, side", [(n, s) for n, sides in LARGE_UNSUPPORTED.items() for s in sides])
def test_a_larger_side_the_model_cannot_take_is_a_user_error(name, side):
    with pytest.raises(UserError, match=f"{side}x{side}"):
        create_model(name, 3, in_chans=1, img_size=(side, side), **SMALL_KWARGS.get(name, {}))


@pytest.mark.parametrize("name, side", [(n, s) for n, sides in UNSUPPORTED.items() for s in sides])
def test_a_side_the_model_cannot_take_is_a_one_line_user_error(name, side):
    with pytest.raises(UserError, match=f"{side}x{side}") as e:
        create_model(name, 3, img_size=(side, side), **SMALL_KWARGS.get(name, {}))
    assert "\n" not in str(e.value)


@cases
def test_eval_output_independent_of_batching(name, in_chans, side):
    model = _build(name, in_chans, side).eval()
    a, b = _images(3, in_chans, side, seed=2), _images(2, in_chans, side, seed=3)
    with torch.no_grad():
        whole = model(torch.cat([a, b]))
        parts = torch.cat([model(a), model(b)])
    torch.testing.assert_close(whole, parts, **TOL, msg=lambda m: f"{name}: f(cat(a, b)) != cat(f(a), f(b))\n{m}")


@cases
def test_channels_last_matches_contiguous(name, in_chans, side):
    model = _build(name, in_chans, side).eval()
    x = _images(2, in_chans, side)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, **TOL, msg=lambda m: f"{name}: channels_last differs\n{m}")


@pytest.mark.parametrize("name", _params([(n,) for n in MODELS.list()], MODELS.list()))
def test_bf16_autocast_channels_last_forward(name):
    model = _build(name, 3, 32).train().to(memory_format=torch.channels_last)
    x = _images(4, 3, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (4, NUM_OUTPUTS) and torch.isfinite(logits.float()).all(), name
    logits.float().sum().backward()


# --- sizes and parameter budgets ------------------------------------------------------------------------------


def test_small_cnn_has_about_62k_params():
    params = count_params(create_model("small_cnn", 10, in_chans=3, img_size=(32, 32)))
    assert 60_000 <= params <= 64_000, f"small_cnn has {params} parameters at 3x32x32, expected 60k-64k"


def test_resnet_cfg_defaults_stay_under_5m_params():
    params = count_params(create_model("resnet_cfg", 10, in_chans=3, img_size=(32, 32)))
    assert params < 5_000_000, f"resnet_cfg has {params} parameters, over the study's 5M budget"


def test_fastnet_matches_airbench94_size():
    params = count_params(create_model("fastnet", 10))
    assert 1_950_000 <= params <= 1_990_000, f"fastnet has {params} parameters, airbench94 has 1.97M"


@pytest.mark.parametrize("name", _params([(n,) for n in MODELS.list()], MODELS.list()))
def test_inspect_model_returns_params_and_flops(name):
    model = _build(name, 3, 32)
    params, flops = inspect_model(model, (3, 32, 32), name=name)
    assert params == count_params(model) and flops > 0, f"{name}: params {params}, flops {flops}"


def test_inspect_model_rejects_an_input_the_model_cannot_take():
    model = create_model("small_cnn", 10, img_size=(32, 32))
    with pytest.raises(UserError, match="3x8x8"):
        inspect_model(model, (3, 8, 8), name="small_cnn")
    with pytest.raises(UserError, match="small_cnn cannot take input size 3x28x28"):  # flatten size is for 32
        inspect_model(model, (3, 28, 28), name="small_cnn")


def test_small_cnn_rejects_a_too_small_img_size_at_build_time():
    with pytest.raises(ValueError, match="8x8"):  # the builder itself raises ValueError ...
        MODELS.get("small_cnn")(num_outputs=10, img_size=(8, 8))
    with pytest.raises(UserError, match="small_cnn.*8x8"):  # ... which create_model reports as the user's error
        create_model("small_cnn", 10, img_size=(8, 8))


@settings(max_examples=25, deadline=None)
@given(height=st.integers(8, 40), width=st.integers(8, 40))
def test_small_cnn_builds_exactly_when_the_size_fits(height, width):
    if min(height, width) < 16:  # two (5×5 conv, 2×2 pool) stages need 16 pixels
        with pytest.raises(UserError, match=f"{height}x{width}"):
            create_model("small_cnn", 3, img_size=(height, width))
        return
    model = create_model("small_cnn", 3, img_size=(height, width))
    assert model(torch.zeros(2, 3, height, width)).shape == (2, 3)


@settings(max_examples=20, deadline=None)
@given(
    num_stages=st.integers(1, 4),
    conv_kernel=st.sampled_from([1, 3, 5]),
    skip_kernel=st.sampled_from([1, 3]),
    pool_size=st.integers(1, 6),
    side=st.integers(12, 36),
)
def test_resnet_cfg_num_features_matches_the_head_input(num_stages, conv_kernel, skip_kernel, pool_size, side):
    model = create_model(
        "resnet_cfg",
        3,
        in_chans=1,
        img_size=(side, side),
        blocks=(1,) * num_stages,
        channels=(4,) * num_stages,
        conv_kernels=conv_kernel,
        skip_kernels=skip_kernel,
        pool_size=pool_size,
    ).eval()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(torch.zeros(2, 1, side, side)), pre_logits=True)
    assert pre_logits.shape == (2, model.num_features)


def test_resnet_cfg_rejects_inconsistent_stage_lists():
    with pytest.raises(UserError, match="conv_kernels"):
        create_model("resnet_cfg_small", 3, conv_kernels=(3, 3))
    with pytest.raises(UserError, match="odd"):
        create_model("resnet_cfg_small", 3, skip_kernels=2)
    with pytest.raises(UserError, match="at least one block"):
        create_model("resnet_cfg_small", 3, blocks=(1, 0, 1))


def test_resnet_cfg_drop_block_only_acts_in_training():
    model = create_model("resnet_cfg_small", 3, drop_block=0.2, drop_rate=0.1).eval()
    x = _images(2, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


# --- fastnet's patch-whitening stem ------------------------------------------------------------------------------


def _correlated_images(batch: int, in_chans: int, side: int) -> torch.Tensor:
    """Images whose neighbouring pixels and channels correlate, so whitening has something to undo."""
    g = torch.Generator().manual_seed(4)
    x = F.avg_pool2d(torch.randn(batch, in_chans, side + 2, side + 2, generator=g), 3, stride=1)  # (B, C, H, W)
    mix = torch.eye(in_chans) + 0.5 * torch.rand(in_chans, in_chans, generator=g)
    return torch.einsum("dc,bchw->bdhw", mix, x) + 0.3


def _channel_cov(x: torch.Tensor) -> torch.Tensor:
    x = x.transpose(0, 1).flatten(1).double()  # (C, B·H·W)
    x = x - x.mean(dim=1, keepdim=True)
    return x @ x.T / x.shape[1]  # (C, C)


def test_fastnet_whitening_stem_is_orthogonal_before_init_from_data():
    model = create_model("fastnet_s", 3)
    weight = model.whiten.weight.flatten(1)  # (2·C·4, C·4)
    half = weight.shape[0] // 2
    torch.testing.assert_close(weight[:half] @ weight[:half].T, torch.eye(half), atol=1e-5, rtol=0)
    torch.testing.assert_close(weight[half:], -weight[:half])


@pytest.mark.parametrize("in_chans", [1, 3])
def test_fastnet_init_from_data_whitens_the_patches(in_chans):
    model = create_model("fastnet_s", 3, in_chans=in_chans)
    images = _correlated_images(64, in_chans, 16)
    before = images.clone()
    model.init_from_data(images, eps=1e-8, chunk_size=16)
    torch.testing.assert_close(images, before, msg="init_from_data mutated its input")
    with torch.no_grad():
        out = model.whiten(images)  # (B, 2·C·4, H-1, W-1)
    half = out.shape[1] // 2
    cov = _channel_cov(out[:, :half])
    torch.testing.assert_close(cov, torch.eye(half, dtype=cov.dtype), atol=0.05, rtol=0)
    torch.testing.assert_close(out[:, half:], -out[:, :half])
    # With airbench's eps the leading components stay whitened; the weakest are damped, never amplified.
    model.init_from_data(images)
    with torch.no_grad():
        variances = _channel_cov(model.whiten(images)[:, :half]).diagonal()
    assert variances[0] > 0.9 and (variances <= 1.0 + 1e-6).all(), variances


def test_fastnet_whitening_stem_stays_frozen_through_training():
    model = create_model("fastnet_s", 3)
    images = _correlated_images(8, 3, 32)
    model.init_from_data(images)
    frozen = model.whiten.weight.clone()
    assert not model.whiten.weight.requires_grad
    bn_weights = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_weights and not any(w.requires_grad for w in bn_weights), "bn_weight_frozen=True by default"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(images), torch.arange(8) % 3).backward()
        optimizer.step()
    assert model.whiten.weight.grad is None
    torch.testing.assert_close(model.whiten.weight, frozen, rtol=0, atol=0)
    assert all((w == 1).all() for w in bn_weights), "frozen BatchNorm weights moved"


def test_fastnet_init_from_data_rejects_wrong_channels():
    with pytest.raises(ValueError, match="init_from_data"):
        create_model("fastnet_s", 3, in_chans=3).init_from_data(torch.zeros(4, 1, 32, 32))


# --- timm adapter, registry hygiene, layers ---------------------------------------------------------------------


def test_unknown_timm_name_raises_user_error_with_suggestion():
    with pytest.raises(UserError, match="did you mean.*resnet18"):
        create_model("timm:resnt18", 10)


def test_timm_model_keeps_timm_state_dict_keys():
    import timm

    model = create_model("timm:resnet18", 10, in_chans=1)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert model.feature_layout == "NCHW" and model.cam_layer == "layer4"


def test_every_model_file_registers_a_model():
    models_dir = Path(visionbench.models.__file__).parent
    registered = {MODELS.get(name).__module__ for name in MODELS.list()}
    for path in sorted(models_dir.glob("*.py")):
        if path.name.startswith("_") or path.name in ("timm_adapter.py", "torchvision_adapter.py", "hub.py"):
            continue
        module = f"visionbench.models.{path.stem}"
        importlib.import_module(module)
        assert module in registered, f"{path.name} registers no model (missing @MODELS.register, or the import line?)"


def test_get_act_layer_resolves_names_and_rejects_unknown_ones():
    assert get_act_layer("gelu") is nn.GELU and get_act_layer("leaky_relu") is nn.LeakyReLU
    assert get_act_layer(nn.SiLU) is nn.SiLU
    with pytest.raises(UserError, match="gelu"):
        get_act_layer("gelux")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_meta_device_params_and_flops_equal_the_real_model(name):
    """A search checks max_params / max_flops on the meta device; with each architecture's defaults (what a search
    builds), the count must be the real one. Inputs: 3×32×32, which every registered model takes."""
    from visionbench.models import inspect_on_meta

    real = inspect_model(create_model(name, 10), (3, 32, 32), name)
    meta = inspect_on_meta(lambda: create_model(name, 10), (3, 32, 32), name)
    assert meta == real, f"{name}: meta (params, flops) {meta} != real {real}"
