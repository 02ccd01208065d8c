"""The model kwargs the seed studies need: resnet_cfg's P as a pooled output, small_cnn's hidden layers as a list,
the dropout CNN's rates, ViT's emb_dropout and qkv_bias. Each changes the model as documented, and the studies'
parameter counts come out exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visionbench.errors import UserError
from visionbench.models import count_params, create_model

# seed 001's final model, written as its README states it: N = 2, C_1 = 128, B = [3, 3], F = [3, 3], K = [3, 3]
STUDY_001 = dict(blocks=[3, 3], channels=[128, 256], conv_kernels=[3, 3], skip_kernels=[3, 3])


# ---------------------------------------------------------------------------------------------------------------
# resnet_cfg: pool_output


def test_resnet_cfg_pool_output_1_is_the_studys_4_435_082_parameters():
    model = create_model("resnet_cfg", 10, img_size=(32, 32), pool_output=1, **STUDY_001)
    assert count_params(model) == 4_435_082
    assert model.num_features == 256 and model.fc.in_features == 256, "global pooling: one value per channel"


def test_resnet_cfg_pool_size_keeps_its_kernel_meaning():
    kernel_1 = create_model("resnet_cfg", 10, img_size=(32, 32), pool_size=1, **STUDY_001)
    assert kernel_1.num_features == 256 * 16 * 16, "a 1x1 kernel keeps the 16x16 map"
    assert count_params(kernel_1) == 4_435_082 - 2_570 + 256 * 16 * 16 * 10 + 10
    whole_map = create_model("resnet_cfg", 10, img_size=(32, 32), pool_size=16, **STUDY_001)
    assert count_params(whole_map) == 4_435_082, "a kernel as large as the map is global pooling too"
    default = create_model("resnet_cfg_small", 10, img_size=(32, 32))
    assert (default.pool_size, default.pool_output, default.num_features) == (4, None, 64 * 2 * 2)


@pytest.mark.parametrize(("side", "pool_output"), [(32, 1), (32, 2), (28, 3), (20, 5)])
def test_resnet_cfg_pool_output_is_adaptive_average_pooling_to_p_by_p(side, pool_output):
    torch.manual_seed(0)
    model = create_model("resnet_cfg_small", 3, img_size=(side, side), pool_output=pool_output).eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
    expected = F.adaptive_avg_pool2d(features, pool_output).flatten(1)
    assert pre_logits.shape == (2, 64 * pool_output**2) == (2, model.num_features)
    torch.testing.assert_close(pre_logits, expected)
    torch.testing.assert_close(logits, model.fc(expected))


def test_resnet_cfg_refuses_both_readings_of_p_and_an_output_larger_than_the_map():
    with pytest.raises(UserError, match="pool_size .* and pool_output .*: give one"):
        create_model("resnet_cfg_small", 3, pool_size=2, pool_output=1)
    with pytest.raises(UserError, match=r"pool_output must be between 1 and the last map's side \(8x8\), got 9"):
        create_model("resnet_cfg_small", 3, img_size=(32, 32), pool_output=9)
    with pytest.raises(UserError, match="pool_output must be between 1"):
        create_model("resnet_cfg_small", 3, pool_output=0)


# ---------------------------------------------------------------------------------------------------------------
# small_cnn: hidden as a list


def test_small_cnn_hidden_120_84_is_the_tutorial_nets_62_006_parameters():
    model = create_model("small_cnn", 10, img_size=(32, 32), hidden=[120, 84])
    assert count_params(model) == 62_006
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [(400, 120), (120, 84), (84, 10)]
    assert model.num_features == 84
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 4, "after each convolution and each hidden layer"


def test_small_cnn_one_hidden_width_keeps_its_count_and_checkpoint_keys():
    model = create_model("small_cnn", 10, img_size=(32, 32))
    assert count_params(model) == 62_066
    keys = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "hidden.weight", "hidden.bias"]
    assert list(model.state_dict()) == [*keys, "fc.weight", "fc.bias"], "a run saved before lists loads as before"
    assert list(create_model("small_cnn", 10, hidden=[144]).state_dict()) == list(model.state_dict())


def test_small_cnn_without_hidden_layers_classifies_the_flattened_map():
    model = create_model("small_cnn", 10, img_size=(32, 32), hidden=[])
    assert model.num_features == 16 * 5 * 5 and model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("hidden", [0, [120, 0], [120, "84"], [True]])
def test_small_cnn_refuses_a_hidden_width_that_is_not_a_positive_int(hidden):
    with pytest.raises(UserError, match="hidden must be a positive int or a list of them"):
        create_model("small_cnn", 10, hidden=hidden)


# ---------------------------------------------------------------------------------------------------------------
# small_cnn_dropout: the rates


def _dropout_rates(model: nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, nn.Dropout)]


def test_small_cnn_dropout_rates_are_kwargs_and_the_count_does_not_move():
    default = create_model("small_cnn_dropout", 10, img_size=(32, 32))
    assert count_params(default) == 4_722_762
    assert _dropout_rates(default) == [0.25, 0.25, 0.5, 0.5]
    swept = create_model("small_cnn_dropout", 10, img_size=(32, 32), conv_drop_rate=0.9, drop_rate=0.1)
    assert _dropout_rates(swept) == [0.9, 0.9, 0.1, 0.1]
    assert count_params(swept) == 4_722_762


def test_small_cnn_dropout_at_rate_zero_is_deterministic_in_training():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    off = create_model("small_cnn_dropout", 10, conv_drop_rate=0.0, drop_rate=0.0).train()
    torch.testing.assert_close(off(x), off(x))
    conv_only = create_model("small_cnn_dropout", 10, conv_drop_rate=0.5, drop_rate=0.0).train()
    assert not torch.equal(conv_only(x), conv_only(x)), "the conv blocks' dropout acts in training"


@pytest.mark.parametrize(("key", "rate"), [("drop_rate", 1.0), ("conv_drop_rate", -0.1)])
def test_small_cnn_dropout_refuses_a_rate_outside_0_1(key, rate):
    with pytest.raises(UserError, match=f"{key} must be in \\[0, 1\\), got {rate}"):
        create_model("small_cnn_dropout", 10, **{key: rate})


# ---------------------------------------------------------------------------------------------------------------
# vit: emb_dropout, qkv_bias, attention and projection dropout

TINY_VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def test_vit_qkv_bias_false_removes_the_query_key_value_biases():
    with_bias = create_model("vit", 10, img_size=(32, 32), **TINY_VIT)
    without = create_model("vit", 10, img_size=(32, 32), qkv_bias=False, **TINY_VIT)
    assert all(block.attn.qkv.bias is not None for block in with_bias.blocks)
    assert all(block.attn.qkv.bias is None for block in without.blocks)
    assert count_params(with_bias) - count_params(without) == 2 * 3 * 32, "depth x (q, k, v) x width"
    assert not [n for n, _ in without.named_parameters() if "qkv.bias" in n]


def test_vit_emb_dropout_drops_tokens_after_the_position_embedding():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = create_model("vit", 10, img_size=(32, 32), emb_dropout=0.1, **TINY_VIT)
    assert model.pos_drop.p == 0.1, "timm's pos_drop_rate"
    assert all(block.attn.attn_drop.p == 0.0 for block in model.blocks), "emb_dropout touches only the embedding"
    model.train()
    assert not torch.equal(model(x), model(x)), "emb_dropout acts in training"
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    plain = create_model("vit", 10, img_size=(32, 32), **TINY_VIT).train()
    torch.testing.assert_close(plain(x), plain(x), msg="no dropout of any kind by default")


def test_vit_vit_pytorch_dropout_maps_onto_attention_and_projection_dropout():
    model = create_model("vit", 10, img_size=(32, 32), attn_drop_rate=0.1, proj_drop_rate=0.2, **TINY_VIT)
    for block in model.blocks:
        assert (block.attn.attn_drop.p, block.attn.proj_drop.p) == (0.1, 0.2)
        assert (block.mlp.drop1.p, block.mlp.drop2.p) == (0.2, 0.2), "the MLP's hidden and output activations"
    assert model.pos_drop.p == 0.0 and model.head_drop.p == 0.0
