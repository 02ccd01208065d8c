"""The seed studies' standard architectures (models/zoo.py): sizes, stems, patch grids and golden parameter counts.
The contract itself is checked for every registered model by test_models.py."""

from __future__ import annotations

import pytest
import torch

from visionbench.errors import UserError
from visionbench.models import count_params, create_model


def _features(name: str, side: int, in_chans: int = 3, **kwargs) -> torch.Tensor:
    model = create_model(name, 10, in_chans=in_chans, img_size=(side, side), **kwargs).eval()
    with torch.no_grad():
        return model.forward_features(torch.zeros(2, in_chans, side, side))


def test_small_cnn_dropout_has_the_labs_4_7m_parameters():
    params = count_params(create_model("small_cnn_dropout", 10, in_chans=3, img_size=(32, 32)))
    assert 4_650_000 <= params <= 4_750_000, params
    model = create_model("small_cnn_dropout", 10).train()
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(model(x), model(x)), "dropout acts in training"
    model.eval()
    assert torch.equal(model(x), model(x))


def test_vgg16_heads_classic_and_pooled():
    classic = count_params(create_model("vgg16", 1000, img_size=(224, 224)))
    assert classic == pytest.approx(138_357_544, rel=1e-6), "VGG-16's published size"
    pooled = create_model("vgg16_bn", 10, img_size=(32, 32), classifier="pool")
    assert 14_700_000 < count_params(pooled) < 14_800_000
    with pytest.raises(UserError, match="classifier: expected 'vgg' or 'pool'"):
        create_model("vgg16", 10, classifier="dense")


@pytest.mark.parametrize(("name", "plain", "small"), [("resnet18", 1, 4), ("resnet50", 1, 4), ("mobilenetv2", 1, 2)])
def test_small_stem_keeps_a_larger_final_map_on_32px(name, plain, small):
    assert _features(name, 32, in_chans=1).shape[-1] == plain
    assert _features(name, 32, in_chans=1, small_stem=True).shape[-1] == small


def test_resnet_and_mobilenet_parameter_counts_are_timms():
    assert count_params(create_model("resnet18", 1000, img_size=(224, 224))) == 11_689_512
    assert count_params(create_model("resnet50", 1000, img_size=(224, 224))) == 25_557_032
    assert count_params(create_model("mobilenetv2", 1000, img_size=(224, 224))) == 3_504_872


@pytest.mark.parametrize(("side", "patch"), [(150, 15), (64, 8), (32, 4), (28, 7)])
def test_vit_takes_any_patch_size_that_divides_the_image(side, patch):
    tokens = _features("vit", side, in_chans=1, patch_size=patch, embed_dim=32, depth=1, num_heads=2)
    assert tokens.shape == (2, 1 + (side // patch) ** 2, 32), "class token + one token per patch"


def test_vit_refuses_a_patch_size_that_does_not_divide_the_image():
    with pytest.raises(UserError, match="vit: img_size 150x150 is not a multiple of patch_size 16"):
        create_model("vit", 3, img_size=(150, 150), patch_size=16)


def test_cnn_vit_tokens_come_from_the_conv_map():
    tokens = _features("cnn_vit", 28, in_chans=1, conv_widths=(8, 16, 16), embed_dim=32, depth=1, num_heads=2)
    assert tokens.shape == (2, 1 + 7 * 7, 32), "stride 4: 28 px gives a 7x7 token grid"


def test_vit_r50_hybrid_is_vit_b16_on_a_resnet50_stem():
    model = create_model("vit_r50_hybrid", 1000, in_chans=1, img_size=(32, 32)).eval()
    assert count_params(model) == pytest.approx(97_750_000, rel=0.01), "ViT-B/16 on R50: about 98M parameters"
    with torch.no_grad():
        tokens = model.forward_features(torch.zeros(1, 1, 32, 32))
        assert tokens.shape == (1, 1 + 2 * 2, 768) and model.feature_layout == "NLC", "stride 16: a 2x2 grid"
        model.reset_head(3)
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    assert model.get_submodule(model.cam_layer) is model.blocks[11].norm1


def test_flops_count_attention_cvt13_matches_the_paper():
    from visionbench.models import inspect_model

    params, flops = inspect_model(create_model("cvt_13", 1000, img_size=(224, 224)), (3, 224, 224), "cvt_13")
    assert params == pytest.approx(20e6, rel=0.03)
    assert flops / 2 == pytest.approx(4.5e9, rel=0.05), "the paper's 4.5G multiply-adds (FLOPs = 2 x MACs)"
