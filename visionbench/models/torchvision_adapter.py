"""torchvision's own classification architectures as visionbench models (`create_model("torchvision:<name>", ...)`),
randomly initialised.

torchvision's builders (`torchvision.models.get_model`) make the model; its class is then swapped for a module-level
subclass that adds the model contract (`forward_features`, `forward_head`, `num_features`, `reset_head`, `cam_layer`,
`feature_layout`) and no submodule, so state_dict keys stay torchvision's: a notebook's
`torchvision.models.resnet18().state_dict()` and torchvision's ImageNet weight files load by name, and deepcopy,
pickle and `torch.save` see an ordinary class. `reset_head` replaces only the last Linear (VGG keeps its two
4096-wide layers). Nothing is ever downloaded: `weights` is always None.
"""

from __future__ import annotations

import difflib
import math

import torch
import torchvision.models as tvm
from torch import nn

from visionbench.errors import UserError


def _kaiming_fan_out(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _Contract:
    """The contract on top of a torchvision class; each family names where its parts are. `forward` is head of
    features, the same arithmetic as torchvision's own `forward`."""

    feature_layout = "NCHW"
    cam_layer = "features"
    _head = "fc"  # the nn.Linear that `reset_head` replaces
    _first_conv = "conv1"  # replaced for in_chans != 3
    _init_first_conv = staticmethod(_kaiming_fan_out)  # the family's own init of that convolution

    @property
    def num_features(self) -> int:
        return self.get_submodule(self._head).in_features

    @property
    def num_outputs(self) -> int:
        return self.get_submodule(self._head).out_features

    def reset_head(self, num_outputs: int) -> None:
        """A new last Linear (PyTorch's default init, as timm's `reset_classifier`) for `num_outputs` outputs."""
        old = self.get_submodule(self._head)
        new = nn.Linear(old.in_features, num_outputs, device=old.weight.device, dtype=old.weight.dtype)
        self.set_submodule(self._head, new)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self._pool(x), 1)  # (B, C)
        return x if pre_logits else self.get_submodule(self._head)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TorchvisionResNet(_Contract, tvm.ResNet):
    """ResNet, Wide ResNet, ResNeXt."""

    cam_layer = "layer4"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, C, H/32, W/32)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(x)


class _PooledClassifier(_Contract):
    """`features`, `avgpool`, then a `classifier` Sequential whose last layer is the head and whose other layers
    (VGG's two 4096-wide Linears, dropout) are the pre-logits."""

    _head = "classifier"  # completed per family with the index of the last layer
    _first_conv = "features.0.0"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[:-1](torch.flatten(self._pool(x), 1))  # (B, num_features)
        return x if pre_logits else self.classifier[-1](x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(x)


class TorchvisionVGG(_PooledClassifier, tvm.VGG):
    _head, _first_conv = "classifier.6", "features.0"


class TorchvisionAlexNet(_PooledClassifier, tvm.AlexNet):
    _head, _first_conv = "classifier.6", "features.0"
    _init_first_conv = staticmethod(nn.Conv2d.reset_parameters)  # AlexNet keeps PyTorch's default init


class TorchvisionMobileNetV2(_PooledClassifier, tvm.MobileNetV2):
    _head = "classifier.1"

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 1)


class TorchvisionMobileNetV3(_PooledClassifier, tvm.MobileNetV3):
    _head = "classifier.3"


class TorchvisionEfficientNet(_PooledClassifier, tvm.EfficientNet):
    _head = "classifier.1"


def _convnext_init(conv: nn.Conv2d) -> None:
    nn.init.trunc_normal_(conv.weight, std=0.02)
    nn.init.zeros_(conv.bias)


class TorchvisionConvNeXt(_PooledClassifier, tvm.ConvNeXt):
    _head = "classifier.2"
    _init_first_conv = staticmethod(_convnext_init)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[:-1](self.avgpool(x))  # its LayerNorm2d takes (B, C, 1, 1), then it flattens itself
        return x if pre_logits else self.classifier[-1](x)


def _densenet_init(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight)


class TorchvisionDenseNet(_Contract, tvm.DenseNet):
    _head, _first_conv = "classifier", "features.conv0"
    _init_first_conv = staticmethod(_densenet_init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        # not in place as torchvision's: the features are the Grad-CAM activation a hook keeps
        return nn.functional.adaptive_avg_pool2d(nn.functional.relu(x), 1)


def _vit_init(conv: nn.Conv2d) -> None:
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / fan_in))
    nn.init.zeros_(conv.bias)


class TorchvisionViT(_Contract, tvm.VisionTransformer):
    """Features are the encoder's tokens (B, 1 + h·w, D), class token first; the head reads the class token."""

    feature_layout = "NLC"
    num_prefix_tokens = 1
    _head, _first_conv = "heads.head", "conv_proj"
    _init_first_conv = staticmethod(_vit_init)

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def cam_layer(self) -> str:
        # the last block's first norm: its patch tokens feed the attention that makes the class token (after the
        # block, patch tokens no longer reach the head and their gradients are zero)
        return f"encoder.layers.encoder_layer_{len(self.encoder.layers) - 1}.ln_1"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)  # (B, h·w, D)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + h·w, D)
        return self.encoder(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.heads[:-1](x[:, 0])  # torchvision's optional representation layer, else nothing
        return x if pre_logits else self.heads[-1](x)


# torchvision.models module of a builder -> the contract class of what it builds. Not RegNet: its builders compute
# the stage widths with tensor ops, which fail on the meta device where `visionbench models` counts parameters.
FAMILIES = {
    "resnet": TorchvisionResNet,
    "vgg": TorchvisionVGG,
    "alexnet": TorchvisionAlexNet,
    "mobilenetv2": TorchvisionMobileNetV2,
    "mobilenetv3": TorchvisionMobileNetV3,
    "efficientnet": TorchvisionEfficientNet,
    "convnext": TorchvisionConvNeXt,
    "densenet": TorchvisionDenseNet,
    "vision_transformer": TorchvisionViT,
}
_OURS = {"weights", "pretrained", "num_classes", "image_size"}  # set by model.pretrained, the task and the data


def _family(name: str) -> type[nn.Module]:
    """The contract class for torchvision's `name`; a UserError for an unknown name or another family."""
    if name not in tvm.list_models():
        close = difflib.get_close_matches(name, tvm.list_models(module=tvm), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise UserError(f"unknown torchvision model {name!r}{hint}")
    # the whole module path: quantization.resnet and video.resnet are other models than resnet
    family = tvm.get_model_builder(name).__module__.removeprefix("torchvision.models.")
    if family not in FAMILIES:
        raise UserError(
            f"torchvision:{name}: the {family} family is not supported; supported families: {', '.join(FAMILIES)}"
        )
    return FAMILIES[family]


def _replace_first_conv(model: nn.Module, path: str, in_chans: int, init) -> None:
    """The stem convolution for `in_chans` inputs, all else equal, initialised as the family initialises it."""
    old = model.get_submodule(path)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"{type(model).__name__}.{path} is a {type(old).__name__}, expected the first nn.Conv2d")
    new = nn.Conv2d(
        in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
        bias=old.bias is not None, padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype,
    )  # fmt: skip
    init(new)
    model.set_submodule(path, new)


def create_torchvision_model(
    name: str, num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs
) -> nn.Module:
    """Build torchvision's `name` without pretrained weights and give it the visionbench model contract.

    Args:
        name: A torchvision classification model name, e.g. 'resnet18', 'vgg16_bn', 'vit_b_16'.
        num_outputs: Classifier width (torchvision's `num_classes`).
        in_chans: Input channels; other than 3, the first convolution is rebuilt for them.
        img_size: (H, W) of the inputs. ViTs are built for it (square, a multiple of the patch size); the CNNs
            take any size their downsampling leaves at least one pixel of.
        **kwargs: Passed to torchvision's builder (e.g. `dropout`, `width_mult`).

    Returns:
        The torchvision module, its class swapped for the family's contract subclass (same state_dict keys).

    Raises:
        UserError: for an unknown name (naming the closest ones), an unsupported family, kwargs the builder
            rejects, or an image size a ViT cannot take.
    """
    cls = _family(name)
    reserved = sorted(_OURS & kwargs.keys())
    if reserved:
        raise UserError(
            f"model.kwargs for 'torchvision:{name}': {', '.join(reserved)} cannot be set there (the task sets the "
            "outputs, the data the image size, model.pretrained the weights)"
        )
    H, W = img_size
    size = {}
    if cls is TorchvisionViT:
        if H != W:
            raise UserError(f"torchvision:{name} needs a square input, got img_size {H}x{W}")
        size = dict(image_size=H)
    try:
        model = tvm.get_model(name, weights=None, num_classes=num_outputs, **size, **kwargs)
    except (TypeError, ValueError) as e:  # an unknown or mistyped model.kwargs entry, as in create_model
        raise UserError(f"model.kwargs for 'torchvision:{name}': {e}") from None
    except AssertionError as e:  # torchvision's checks of its arguments, e.g. ViT's "indivisible by patch size"
        given = f" and model.kwargs {kwargs}" if kwargs else ""
        raise UserError(f"torchvision:{name} cannot be built for img_size {H}x{W}{given}: {e}") from None
    base = cls.__bases__[-1]  # the torchvision class
    if type(model) is not base:
        raise TypeError(f"torchvision's {name} built a {type(model).__name__}, expected a {base.__name__}")
    model.__class__ = cls
    if in_chans != 3:
        _replace_first_conv(model, cls._first_conv, in_chans, cls._init_first_conv)
    return model
