"""CvT and CNN-T beyond the registry-wide contract tests: paper size, input sizes, conv projection, CAM layer.

Tiny widths everywhere except the CvT-13 parameter golden (built once, at 224 px with 1000 outputs).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionbench.errors import UserError
from visionbench.models import count_params, create_model, inspect_model

TINY = {
    "cvt_13": dict(dims=(16, 48, 96)),  # CvT-13's heads and depths, narrow
    "cvt": dict(dims=(16, 32, 32), heads=(1, 2, 2), depths=(1, 1, 1)),
    "cnn_t": dict(conv_widths=(8, 16, 16), embed_dim=32, depth=2, num_heads=2),
}
NUM_OUTPUTS = 4


def _build(name: str, in_chans: int = 3, side: int = 32, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, NUM_OUTPUTS, in_chans=in_chans, img_size=(side, side), **{**TINY[name], **kwargs})


def _images(batch: int, in_chans: int, side: int) -> torch.Tensor:
    return torch.randn(batch, in_chans, side, side, generator=torch.Generator().manual_seed(1))


def test_cvt_13_matches_the_paper_parameter_count():
    model = create_model("cvt_13", 1000, img_size=(224, 224))
    params = count_params(model)
    assert abs(params - 20.0e6) <= 0.03 * 20.0e6, f"cvt_13 has {params} parameters at 224 px, paper: 20M"


@pytest.mark.parametrize("name", ["cvt_13", "cnn_t"])
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("side", [28, 32, 64, 150])
def test_output_shape_at_every_supported_size(name, in_chans, side):
    model = _build(name, in_chans, side).train()
    logits = model(_images(2, in_chans, side))
    assert logits.shape == (2, NUM_OUTPUTS), f"{name} at {in_chans}x{side}x{side}: {tuple(logits.shape)}"
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["cvt_13", "cnn_t"])
@pytest.mark.parametrize("side", [224, 300])
def test_large_inputs_run(name, side):
    model = _build(name, 3, side, depths=(1, 1, 1)) if name == "cvt_13" else _build(name, 3, side, depth=1)
    with torch.no_grad():
        assert model.eval()(_images(1, 3, side)).shape == (1, NUM_OUTPUTS)


def test_cvt_has_no_position_embedding_and_a_class_token_only_in_the_last_stage():
    model = _build("cvt_13")
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not [n for n in names if "pos" in n], f"CvT has a position embedding: {[n for n in names if 'pos' in n]}"
    assert [stage.cls_token is not None for stage in model.stages] == [False, False, True]


def test_cvt_conv_projection_squeezes_keys_and_values():
    model = _build("cvt_13", side=64).eval()
    seen: dict[str, tuple[int, ...]] = {}
    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, tuple(out.shape)))
        for name, module in model.named_modules()
        if name.endswith(("conv_proj_q", "conv_proj_k", "conv_proj_v"))
    ]
    try:
        with torch.no_grad():
            model(_images(2, 3, 64))
    finally:
        for handle in handles:
            handle.remove()
    queries = {n: s for n, s in seen.items() if n.endswith("_q")}
    assert len(queries) == 1 + 2 + 10, f"expected one q projection per block, got {sorted(queries)}"
    for name, (_, _, h, w) in queries.items():
        for kv in ("k", "v"):
            _, _, h_kv, w_kv = seen[name[:-1] + kv]
            assert (h_kv, w_kv) == (-(-h // 2), -(-w // 2)), f"{name}: q grid {h}x{w}, {kv} grid {h_kv}x{w_kv}"
            assert h_kv * w_kv < h * w, f"{name}: {kv} has as many tokens as q"
    assert seen["stages.0.blocks.0.attn.conv_proj_q"][2:] == (16, 16)  # 64 px / stride 4


def test_cvt_small_input_keeps_more_tokens():
    assert _build("cvt_13", side=32).grid_size == (2, 2)
    assert _build("cvt_13", side=32, small_input=True).grid_size == (4, 4)


@settings(max_examples=15, deadline=None)
@given(side=st.integers(1, 40))
def test_cvt_builds_exactly_when_the_stage_1_conv_fits(side):
    if side < 3:  # 7x7 kernel, padding 2
        with pytest.raises(UserError, match=f"{side}x{side}"):
            _build("cvt", side=side)
        return
    model = _build("cvt", side=side).eval()
    with torch.no_grad():
        features = model.forward_features(_images(1, 3, side))
    h, w = model.grid_size
    assert features.shape == (1, 1 + h * w, model.num_features)


@pytest.mark.parametrize("name, side", [("cvt_13", 2), ("cnn_t", 4)])
def test_a_too_small_input_is_a_one_line_user_error(name, side):
    with pytest.raises(UserError, match=f"{name}.*{side}x{side}") as e:
        _build(name, side=side)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["cvt_13", "cnn_t"])
def test_cam_layer_output_reshapes_to_a_map_that_carries_gradient(name):
    model = _build(name, side=64).eval()
    outputs = []
    handle = model.get_submodule(model.cam_layer).register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        logits = model(_images(2, 3, 64))
    finally:
        handle.remove()
    (tokens,) = outputs
    h, w = model.grid_size
    B, N, D = tokens.shape
    assert (B, N) == (2, model.num_prefix_tokens + h * w), f"{name}: {tuple(tokens.shape)}, grid {h}x{w}"
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), tokens)  # (B, N, D)
    for x in (tokens, grad):  # Grad-CAM's reshape_transform: drop the class token, tokens back to a map
        cam_map = x[:, model.num_prefix_tokens :].transpose(1, 2).reshape(B, D, h, w)  # (B, D, h, w)
        assert cam_map.shape == (2, D, h, w)
    assert cam_map.abs().sum(dim=1).gt(0).all(), f"{name}: some patch tokens of the cam_layer get no gradient"


def test_cnn_t_position_embedding_is_sized_from_img_size():
    for side, grid in [(28, 4), (32, 4), (64, 8), (150, 19)]:
        model = _build("cnn_t", side=side)
        assert model.grid_size == (grid, grid)
        assert model.pos_embed.shape == (1, 1 + grid * grid, model.num_features)


def test_cnn_t_refuses_another_size_unless_dynamic():
    model = _build("cnn_t", side=32)
    with pytest.raises(UserError, match="cnn_t cannot take input size 3x64x64.*4x4 token grid"):
        inspect_model(model, (3, 64, 64), name="cnn_t")
    dynamic = _build("cnn_t", side=32, dynamic_img_size=True).eval()
    with torch.no_grad():
        assert dynamic(_images(2, 3, 64)).shape == (2, NUM_OUTPUTS)
        assert dynamic.forward_features(_images(2, 3, 32)).shape == (2, 1 + 4 * 4, 32)
