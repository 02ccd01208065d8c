"""The seed studies' standard architectures, built with timm and given the model contract (`_builder.py`).

- `vgg16`, `vgg16_bn`: timm's VGG-16 (with BatchNorm for `_bn`). `classifier="vgg"` keeps VGG's own head (a 7×7
  conv "fc6" and fc7, 4096 wide: 138M parameters); `classifier="pool"` is global average pooling and one linear
  layer, the usual head when a pretrained VGG is transferred to small images (14.7M parameters).
- `resnet18`, `resnet34`, `resnet50`, `mobilenetv2`: timm's, with `small_stem=True` for 28–32 px inputs: a 3×3
  stride-1 first convolution and no max-pool (ResNets), a stride-1 first convolution (MobileNetV2), so that a
  32 px image keeps a 4×4 (ResNet) or 2×2 (MobileNetV2) final map instead of 1×1.
- `vit`: timm's VisionTransformer with any patch size, depth, width and heads (DeepLense: 15×15 patches on
  150 px, 8×8 on 64 px). The image side must be a multiple of the patch size.
- `vit_r50_hybrid`: ViT-B/16 on a ResNet-50 stem (timm's `vit_base_r50_s16_224`, ~98M parameters at 224 px).
- `cnn_vit`: a small CNN+ViT hybrid for small images: a few conv-BN-ReLU stages (overall stride 4) whose map is the
  token grid of a small ViT (timm's `HybridEmbed`, so it composes like timm's own hybrids).
- `small_cnn_dropout`: the image-mining lab's dropout CNN: two blocks of two 3×3 convs (64, 128) with max-pool and
  dropout (`conv_drop_rate`, 0.25), then two 512-wide dense layers with dropout (`drop_rate`, 0.5): 4,722,762
  parameters at 3×32×32 with 10 outputs. The lab reports 4,746,186 without naming its layers; no plain reading
  of "a CNN with dropout" we counted gives that figure (see configs/cifar10/cnn_dropout.yaml).

Random init only here; `model.pretrained` loads weights afterwards (`engine/transfer.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from visionbench.models.timm_adapter import give_contract
from visionbench.registry import MODELS


def _timm(name: str, num_outputs: int, in_chans: int, img_size: tuple[int, int], **kwargs) -> nn.Module:
    import timm  # timm is imported by the builders that use it: a registry lookup must not cost its import

    return timm.create_model(name, pretrained=False, num_classes=num_outputs, in_chans=in_chans, **kwargs)


def _check_side(name: str, img_size: tuple[int, int], minimum: int) -> None:
    if min(img_size) < minimum:
        H, W = img_size
        raise ValueError(f"{name} needs inputs of at least {minimum}x{minimum}, got img_size {H}x{W}")


# ---------------------------------------------------------------------------------------------------------------
# VGG


def _vgg(name: str, num_outputs: int, in_chans: int, img_size: tuple[int, int], classifier: str) -> nn.Module:
    if classifier not in ("vgg", "pool"):
        raise ValueError(f"classifier: expected 'vgg' or 'pool', got {classifier!r}")
    _check_side(name, img_size, 32)  # five 2×2 max-pools
    model = _timm(name, num_outputs, in_chans, img_size)
    if classifier == "pool":  # the 512-channel map, average-pooled, into one linear layer
        model.pre_logits = nn.Identity()
        from timm.layers import ClassifierHead

        model.head = ClassifierHead(model.num_features, num_outputs, pool_type="avg")
        model.head_hidden_size = model.num_features
    last_relu = max(i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))
    return give_contract(model, in_chans, img_size, cam_layer=f"features.{last_relu}")  # the last conv's output


@MODELS.register("vgg16")
def vgg16(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), classifier: str = "vgg"):
    """VGG-16 (Simonyan and Zisserman, 2015) from timm."""
    return _vgg("vgg16", num_outputs, in_chans, img_size, classifier)


@MODELS.register("vgg16_bn")
def vgg16_bn(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), classifier: str = "vgg"):
    """VGG-16 with BatchNorm after every convolution, from timm."""
    return _vgg("vgg16_bn", num_outputs, in_chans, img_size, classifier)


# ---------------------------------------------------------------------------------------------------------------
# ResNet, MobileNetV2


def _resnet(name: str, num_outputs: int, in_chans: int, img_size: tuple[int, int], small_stem: bool, **kwargs):
    model = _timm(name, num_outputs, in_chans, img_size, **kwargs)
    if small_stem:
        model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return give_contract(model, in_chans, img_size)


@MODELS.register("resnet18")
def resnet18(num_outputs: int, in_chans: int = 3, img_size=(32, 32), small_stem: bool = False, drop_rate: float = 0.0):
    """ResNet-18 (He et al., 2016) from timm; `small_stem` for 28–32 px inputs."""
    return _resnet("resnet18", num_outputs, in_chans, img_size, small_stem, drop_rate=drop_rate)


@MODELS.register("resnet34")
def resnet34(num_outputs: int, in_chans: int = 3, img_size=(32, 32), small_stem: bool = False, drop_rate: float = 0.0):
    """ResNet-34 from timm (the DeepLense study's baseline); `small_stem` for 28–32 px inputs."""
    return _resnet("resnet34", num_outputs, in_chans, img_size, small_stem, drop_rate=drop_rate)


@MODELS.register("resnet50")
def resnet50(num_outputs: int, in_chans: int = 3, img_size=(32, 32), small_stem: bool = False, drop_rate: float = 0.0):
    """ResNet-50 from timm (the CIFAR-100 study); `small_stem` for 28–32 px inputs."""
    return _resnet("resnet50", num_outputs, in_chans, img_size, small_stem, drop_rate=drop_rate)


@MODELS.register("mobilenetv2")
def mobilenetv2(
    num_outputs: int, in_chans: int = 3, img_size=(32, 32), small_stem: bool = False, drop_rate: float = 0.0
):
    """MobileNetV2 (Sandler et al., 2018), width 1.0, from timm; `small_stem` makes the first conv stride 1."""
    model = _timm("mobilenetv2_100", num_outputs, in_chans, img_size, drop_rate=drop_rate)
    if small_stem:
        model.conv_stem.stride = (1, 1)
    return give_contract(model, in_chans, img_size)


# ---------------------------------------------------------------------------------------------------------------
# Vision transformers


def _patch_check(name: str, img_size: tuple[int, int], patch_size: int) -> None:
    H, W = img_size
    if H % patch_size or W % patch_size:
        raise ValueError(f"{name}: img_size {H}x{W} is not a multiple of patch_size {patch_size}")


def _vit(num_outputs: int, in_chans: int, img_size: tuple[int, int], depth: int, **kwargs) -> nn.Module:
    """timm's VisionTransformer given the model contract, Grad-CAM at the last block's first norm (its tokens)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=tuple(img_size), in_chans=in_chans, num_classes=num_outputs, depth=depth, **kwargs
    )
    return give_contract(model, in_chans, img_size, cam_layer=f"blocks.{depth - 1}.norm1")


@MODELS.register("vit")
def vit(
    num_outputs: int,
    in_chans: int = 3,
    img_size: tuple[int, int] = (32, 32),
    patch_size: int = 4,
    embed_dim: int = 192,
    depth: int = 6,
    num_heads: int = 3,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_rate: float = 0.0,
    emb_dropout: float = 0.0,
    attn_drop_rate: float = 0.0,
    proj_drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
):
    """ViT (Dosovitskiy et al., 2021) on timm's VisionTransformer: class token, learned position embedding.

    `drop_rate` is timm's dropout before the head; `emb_dropout` (timm's `pos_drop_rate`) drops the tokens after the
    position embedding is added; `attn_drop_rate` the attention weights; `proj_drop_rate` the attention output and
    the MLP's hidden and output activations. vit-pytorch's `ViT(dropout=p, emb_dropout=q)` is `attn_drop_rate=p,
    proj_drop_rate=p, emb_dropout=q, qkv_bias=False` here (its query/key/value projection has no bias).
    """
    _patch_check("vit", img_size, patch_size)
    model_args = dict(patch_size=patch_size, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio)
    drops = dict(drop_rate=drop_rate, pos_drop_rate=emb_dropout, attn_drop_rate=attn_drop_rate)
    drops.update(proj_drop_rate=proj_drop_rate, drop_path_rate=drop_path_rate)
    return _vit(num_outputs, in_chans, img_size, depth, qkv_bias=qkv_bias, **drops, **model_args)


@MODELS.register("vit_r50_hybrid")
def vit_r50_hybrid(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (224, 224)):
    """ViT-B/16 on a ResNet-50 (v2, group norm) stem, overall stride 16: timm's `vit_base_r50_s16_224`."""
    _patch_check("vit_r50_hybrid", img_size, 16)
    import timm

    model = timm.create_model(
        "vit_base_r50_s16_224", pretrained=False, num_classes=num_outputs, in_chans=in_chans, img_size=tuple(img_size)
    )
    return give_contract(model, in_chans, img_size, cam_layer="blocks.11.norm1")


def _conv_stem(in_chans: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3×3-BN-ReLU stages; every stage but the first halves the resolution."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(in_chans, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(width), nn.ReLU()]
        in_chans = width
    stem = nn.Sequential(*layers)
    stem.num_features = widths[-1]  # what timm's HybridEmbed reads when given feature_size
    return stem


@MODELS.register("cnn_vit")
def cnn_vit(
    num_outputs: int,
    in_chans: int = 3,
    img_size: tuple[int, int] = (32, 32),
    conv_widths: tuple[int, ...] = (32, 64, 128),
    embed_dim: int = 192,
    depth: int = 4,
    num_heads: int = 3,
    drop_path_rate: float = 0.0,
):
    """A small CNN+ViT hybrid: conv stages (stride 2^(stages-1)) give the token grid of a ViT (timm HybridEmbed)."""
    stride = 2 ** (len(conv_widths) - 1)
    _check_side("cnn_vit", img_size, stride)
    H, W = img_size
    grid = (-(-H // stride), -(-W // stride))  # stride-2 convs with padding 1 round up

    def embed(**kwargs) -> nn.Module:
        kwargs.pop("patch_size", None)
        from timm.models.vision_transformer_hybrid import HybridEmbed

        return HybridEmbed(
            _conv_stem(in_chans, tuple(conv_widths)),
            patch_size=1,
            feature_size=grid,
            in_chans=in_chans,
            embed_dim=embed_dim,
            img_size=tuple(img_size),
            **{k: v for k, v in kwargs.items() if k in ("bias", "dynamic_img_pad", "output_fmt", "strict_img_size")},
        )

    model_args = dict(embed_dim=embed_dim, num_heads=num_heads, drop_path_rate=drop_path_rate, embed_layer=embed)
    return _vit(num_outputs, in_chans, img_size, depth, patch_size=1, **model_args)


# ---------------------------------------------------------------------------------------------------------------
# The image-mining lab's dropout CNN


class SmallCNNDropout(nn.Module):
    """[conv3×3(64)-ReLU ×2, max-pool, dropout] → [conv3×3(128)-ReLU ×2, max-pool, dropout] → flatten →
    [dense 512-ReLU-dropout] ×2 → classifier. Padding 1 keeps sizes, so the flatten width is 128·(H/4)·(W/4).

    Args:
        num_outputs: Width of the classifier.
        in_chans: Input channels.
        img_size: (H, W) of the inputs.
        hidden: Width of the two dense layers.
        conv_drop_rate: Dropout after each conv block's max-pool.
        drop_rate: Dropout after each dense layer.

    Raises:
        ValueError: inputs below 4×4, or a rate outside [0, 1).
    """

    def __init__(
        self,
        num_outputs: int,
        in_chans: int = 3,
        img_size: tuple[int, int] = (32, 32),
        hidden: int = 512,
        conv_drop_rate: float = 0.25,
        drop_rate: float = 0.5,
    ):
        super().__init__()
        H, W = img_size
        if H < 4 or W < 4:
            raise ValueError(f"small_cnn_dropout needs inputs of at least 4x4, got img_size {H}x{W}")
        for key, rate in (("conv_drop_rate", conv_drop_rate), ("drop_rate", drop_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {rate}")

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2), nn.Dropout(conv_drop_rate),
            )  # fmt: skip

        self.features = nn.Sequential(block(in_chans, 64), block(64, 128))
        flat = 128 * (H // 4) * (W // 4)
        self.hidden = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(drop_rate),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(drop_rate),
        )  # fmt: skip
        self.fc = nn.Linear(hidden, num_outputs)
        self.num_outputs, self.num_features = num_outputs, hidden
        self.cam_layer = "features.1.3"  # the last convolution's ReLU
        self.feature_layout = "NCHW"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 128, H/4, W/4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_outputs: int) -> None:
        self.num_outputs = num_outputs
        self.fc = nn.Linear(self.num_features, num_outputs)


@MODELS.register("small_cnn_dropout")
def small_cnn_dropout(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs):
    """The image-mining lab's CNN with dropout (`conv_drop_rate`, `drop_rate`): 4,722,762 parameters at 3×32×32."""
    return SmallCNNDropout(num_outputs, in_chans=in_chans, img_size=tuple(img_size), **kwargs)
