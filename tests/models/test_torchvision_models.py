"""`torchvision:<name>` models: torchvision's own architectures with the model contract and torchvision's state_dict
keys. Parameter counts and keys are checked on the meta device (VGG16 and ViT-B/16 at 224 px cost nothing there);
forwards run on one small member of each family, ViT-B/16 once per module at 32 px. CPU, random init, no network.
"""

from __future__ import annotations

import copy
import io
import json
import pickle

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from visionbench.analysis.attribution import attribute
from visionbench.analysis.tokens import reshape_transform
from visionbench.engine.transfer import head_parameter_names
from visionbench.errors import UserError
from visionbench.models import count_params, create_model, inspect_model, inspect_on_meta
from visionbench.models._builder import CONTRACT

# torchvision's published counts at 224 px, 1000 classes (the weights' meta["num_params"])
EXACT_PARAMS = {
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "vit_b_16": 86_567_656,
}
# one name or more per supported family: (name, the Linear reset_head replaces, the stem conv)
FAMILY_MEMBERS = {
    "resnet18": ("fc", "conv1"),
    "resnet101": ("fc", "conv1"),
    "wide_resnet50_2": ("fc", "conv1"),
    "resnext50_32x4d": ("fc", "conv1"),
    "vgg11": ("classifier.6", "features.0"),
    "vgg19_bn": ("classifier.6", "features.0"),
    "alexnet": ("classifier.6", "features.0"),
    "mobilenet_v2": ("classifier.1", "features.0.0"),
    "mobilenet_v3_large": ("classifier.3", "features.0.0"),
    "mobilenet_v3_small": ("classifier.3", "features.0.0"),
    "efficientnet_b0": ("classifier.1", "features.0.0"),
    "efficientnet_v2_s": ("classifier.1", "features.0.0"),
    "convnext_tiny": ("classifier.2", "features.0.0"),
    "densenet121": ("classifier", "features.conv0"),
    "vit_b_32": ("heads.head", "conv_proj"),
    "vit_l_16": ("heads.head", "conv_proj"),
}
# a cheap member of each family and an input side it takes, for real forwards
SMALL = {
    "resnet18": 16,
    "vgg11": 32,
    "alexnet": 64,  # its 11x11/4 stem and three 3x3/2 pools leave nothing of 32 px
    "mobilenet_v2": 16,
    "mobilenet_v3_small": 16,
    "efficientnet_b0": 16,
    "convnext_tiny": 32,
    "densenet121": 32,
}


def _meta(name: str, num_outputs: int = 1000, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(f"torchvision:{name}", num_outputs, img_size=(224, 224), **kwargs)


def _reference(name: str, **kwargs) -> nn.Module:
    """torchvision's own model, as a notebook builds it."""
    with torch.device("meta"):
        return tvm.get_model(name, weights=None, **kwargs)


def _images(batch: int, in_chans: int, side: int) -> torch.Tensor:
    return torch.randn(batch, in_chans, side, side, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vit():
    """ViT-B/16 at 32 px (a 2x2 patch grid), one grey channel: 86M parameters, built once. torchvision
    zero-initialises its head, which would make every gradient 0: a reset head has PyTorch's default init."""
    torch.manual_seed(0)
    model = create_model("torchvision:vit_b_16", 5, in_chans=1, img_size=(32, 32)).eval()
    model.reset_head(5)
    return model


# --- sizes and keys, on the meta device -----------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", EXACT_PARAMS.items())
def test_parameter_counts_are_torchvision_s_at_224_px_and_1000_classes(name, expected):
    assert count_params(_meta(name)) == expected


def test_vgg16_keeps_its_4096_wide_classifier_and_resets_only_the_last_linear():
    model = _meta("vgg16", 10)
    widths = [(m.in_features, m.out_features) for m in model.classifier if isinstance(m, nn.Linear)]
    assert widths == [(512 * 7 * 7, 4096), (4096, 4096), (4096, 10)] and model.num_features == 4096
    assert head_parameter_names(model) == {"classifier.6.weight", "classifier.6.bias"}


@pytest.mark.parametrize("name", [*EXACT_PARAMS, *FAMILY_MEMBERS])
def test_state_dict_keys_and_shapes_are_torchvision_s(name):
    ours = {k: tuple(v.shape) for k, v in _meta(name).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in _reference(name).state_dict().items()}
    assert list(ours) == list(theirs) and ours == theirs


@pytest.mark.parametrize("name", EXACT_PARAMS)
def test_ten_outputs_change_only_the_last_layer(name):
    wide, narrow = _meta(name, 1000).state_dict(), _meta(name, 10).state_dict()
    changed = {k for k in wide if wide[k].shape != narrow[k].shape}
    model = _meta(name, 10)
    assert changed == head_parameter_names(model) and len(changed) == 2, changed
    assert count_params(_meta(name)) - count_params(model) == 990 * (model.num_features + 1)


@pytest.mark.parametrize("name, parts", FAMILY_MEMBERS.items())
def test_contract_attributes_and_head_names_of_each_family(name, parts):
    head, stem = parts
    model = _meta(name, 7)
    assert all(hasattr(model, a) for a in CONTRACT), [a for a in CONTRACT if not hasattr(model, a)]
    assert head_parameter_names(model) == {f"{head}.weight", f"{head}.bias"}
    assert model.get_submodule(head).in_features == model.num_features and model.num_outputs == 7
    assert model.feature_layout == ("NLC" if name.startswith("vit") else "NCHW")
    model.get_submodule(model.cam_layer)
    model.reset_head(3)
    assert model.get_submodule(head).out_features == 3 and model.num_outputs == 3
    grey = _meta(name, 7, in_chans=1)
    conv, rgb = grey.get_submodule(stem), model.get_submodule(stem)
    assert conv.in_channels == 1 and rgb.in_channels == 3
    assert [getattr(conv, a) for a in ("out_channels", "kernel_size", "stride", "padding", "dilation")] == [
        getattr(rgb, a) for a in ("out_channels", "kernel_size", "stride", "padding", "dilation")
    ]
    assert (conv.bias is None) == (rgb.bias is None)
    assert list(grey.state_dict()) == list(_reference(name).state_dict())


def test_meta_counts_and_flops_equal_the_real_model():
    real = inspect_model(create_model("torchvision:resnet18", 10), (3, 32, 32), "torchvision:resnet18")
    meta = inspect_on_meta(lambda: create_model("torchvision:resnet18", 10), (3, 32, 32), "torchvision:resnet18")
    assert meta == real and real[0] == 11_181_642


def test_vgg16_takes_32_px_through_its_adaptive_pool():
    with torch.device("meta"):
        model = create_model("torchvision:vgg16", 10, img_size=(32, 32))
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_size_a_cnn_cannot_take_is_refused_before_training():
    with torch.device("meta"):
        model = create_model("torchvision:vgg16", 10, in_chans=1, img_size=(28, 28))
    with pytest.raises(UserError, match="torchvision:vgg16 cannot take input size 1x28x28"):
        inspect_model(model, (1, 28, 28), "torchvision:vgg16")


# --- real forwards ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, side", SMALL.items())
def test_forward_is_torchvision_s_own_and_the_head_of_the_features(name, side):
    torch.manual_seed(0)
    model = create_model(f"torchvision:{name}", 5, img_size=(side, side)).eval()
    x = _images(2, 3, side)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
        theirs = type(model).__bases__[-1].forward(model, x)  # torchvision's own forward on the same weights
    assert features.ndim == 4 and pre_logits.shape == (2, model.num_features) and logits.shape == (2, 5)
    torch.testing.assert_close(logits, theirs, rtol=0, atol=0)
    torch.testing.assert_close(model.forward_head(features), logits)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_grey_28_px_trains_and_every_parameter_gets_a_gradient(name):
    model = create_model(f"torchvision:{name}", 10, in_chans=1, img_size=(28, 28)).train()
    logits = model(_images(4, 1, 28))  # Fashion-MNIST's 1x28x28
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).mean().backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


def test_a_notebook_state_dict_loads_by_name_and_gives_its_outputs():
    torch.manual_seed(0)
    notebook = tvm.resnet18(num_classes=10).eval()
    model = create_model("torchvision:resnet18", 10, img_size=(32, 32))
    model.load_state_dict(notebook.state_dict())  # strict: every key by name
    x = _images(2, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), notebook(x), rtol=0, atol=0)


def test_torchvision_weights_load_into_a_grey_model_head_skipped_stem_adapted(tmp_path):
    import safetensors.torch

    from visionbench.engine.transfer import load_pretrained

    rgb = tvm.resnet18().state_dict()
    safetensors.torch.save_file(rgb, tmp_path / "resnet18.safetensors")
    model = create_model("torchvision:resnet18", 10, in_chans=1, img_size=(28, 28))
    head = model.fc.weight.clone()
    load_pretrained(model, str(tmp_path / "resnet18.safetensors"), "torchvision:resnet18")
    torch.testing.assert_close(model.fc.weight, head, rtol=0, atol=0)  # 10 outputs: the head stays as built
    for key, value in model.state_dict().items():
        if not key.startswith(("fc.", "conv1.")):
            torch.testing.assert_close(value, rgb[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(model.conv1.weight, rgb["conv1.weight"].sum(dim=1, keepdim=True))


def test_deepcopy_pickle_and_torch_save_keep_the_class_and_the_outputs():
    model = create_model("torchvision:mobilenet_v3_small", 4, img_size=(16, 16)).eval()
    x = _images(2, 3, 16)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)]
    with torch.no_grad():
        expected = model(x)
        for other in copies:
            assert type(other) is type(model) and other.cam_layer == "features"
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


def test_kwargs_reach_torchvision_s_builder():
    with torch.device("meta"):
        mobilenet = create_model("torchvision:mobilenet_v2", 3, dropout=0.3, width_mult=0.5)
    assert mobilenet.classifier[0].p == 0.3 and mobilenet.num_features == 1280
    assert count_params(mobilenet) == count_params(_reference("mobilenet_v2", num_classes=3, width_mult=0.5))


# --- the ViT: tokens, image size, Grad-CAM ---------------------------------------------------------------------


def test_vit_features_are_tokens_with_a_class_token_first(vit):
    x = _images(2, 1, 32)
    with torch.no_grad():
        tokens = vit.forward_features(x)
        assert tokens.shape == (2, 1 + 2 * 2, 768) and vit.feature_layout == "NLC"
        assert vit.forward_head(tokens, pre_logits=True).shape == (2, vit.num_features)
        torch.testing.assert_close(vit.forward_head(tokens), vit(x))
        torch.testing.assert_close(vit(x), tvm.VisionTransformer.forward(vit, x), rtol=0, atol=0)
    assert vit.grid_size == (2, 2) and vit.num_prefix_tokens == 1 and vit.image_size == 32
    assert reshape_transform(vit)(tokens).shape == (2, 768, 2, 2)


def test_vit_grad_cam_maps_come_from_the_last_block(vit):
    assert vit.cam_layer == "encoder.layers.encoder_layer_11.ln_1"
    maps = attribute(vit, _images(3, 1, 32), torch.tensor([0, 1, 2]), "gradcam")
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all() and maps.amax() > 0


@pytest.mark.parametrize(
    "size, message",
    [((32, 48), "torchvision:vit_b_16 needs a square input, got img_size 32x48"), ((30, 30), "img_size 30x30")],
)
def test_a_size_the_vit_cannot_take_is_a_one_line_user_error(size, message):
    with pytest.raises(UserError, match=message) as e:
        create_model("torchvision:vit_b_16", 10, img_size=size)
    assert "\n" not in str(e.value)


# --- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("resnt18", {}, "unknown torchvision model 'resnt18'; did you mean resnet18"),
        ("swin_t", {}, "torchvision:swin_t: the swin_transformer family is not supported; supported families: resnet"),
        ("fasterrcnn_resnet50_fpn", {}, "the detection.faster_rcnn family is not supported"),
        ("quantized_resnet18", {}, "the quantization.resnet family is not supported"),
        ("r3d_18", {}, "the video.resnet family is not supported"),
        ("resnet18", {"drop_rate": 0.1}, "model.kwargs for 'torchvision:resnet18': .*drop_rate"),
        ("vgg16", {"weights": "DEFAULT"}, "model.kwargs for 'torchvision:vgg16': weights cannot be set there"),
        ("vgg16", {"pretrained": True}, "pretrained cannot be set there"),
        ("vit_b_16", {"image_size": 64}, "image_size cannot be set there"),
        ("vit_b_16", {"hidden_dim": 64}, "model.kwargs for 'torchvision:vit_b_16': .*hidden_dim"),
    ],
)
def test_bad_names_and_kwargs_are_one_line_user_errors(name, kwargs, message):
    with pytest.raises(UserError, match=message) as e, torch.device("meta"):
        create_model(f"torchvision:{name}", 10, **kwargs)
    assert "\n" not in str(e.value)


# --- end to end ------------------------------------------------------------------------------------------------


def test_one_epoch_on_synthetic_data_with_torchvision_resnet18(tmp_path):
    from visionbench import layout
    from visionbench.cli.main import main

    sets = ["model.name=torchvision:resnet18", "trainer.epochs=1", f"trainer.out_dir={tmp_path}"]
    sets += ["data.kwargs.n_train=128", "data.kwargs.n_test=32", "trainer.batch_size=32"]
    assert main(["train", "configs/smoke/synthetic.yaml", *sum((["--set", s] for s in sets), [])]) == 0
    (summary,) = tmp_path.glob(f"*/*/{layout.SUMMARY}")
    record = json.loads(summary.read_text())
    # synthetic: 1x16x16 images, 4 classes; the grey stem is 64·1·7·7 instead of 64·3·7·7
    assert record["status"] == "finished" and record["params"] == 11_689_512 - 64 * 2 * 49 - 996 * 513
