"""`small_cnn`: the simple LeNet-style CNN of a CIFAR-10 image-mining lab, the zoo's smallest baseline.

Two 5×5 convolutions (6 and 16 channels, each followed by LeakyReLU and 2×2 max-pool), hidden linear layers
(LeakyReLU) and the classifier. The layout is LeNet-5's (LeCun et al., 1998,
http://yann.lecun.com/exdb/publis/pdf/lecun-01a.pdf). `hidden: [120, 84]` is LeNet-5's and PyTorch's CIFAR-10
tutorial net, the lab's 62,006 parameters at 3×32×32 with 10 outputs; the default, one hidden layer of 144
(62,066 parameters), is the model of the golden tests, so keep it cheap and deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visionbench.models.layers import get_act_layer
from visionbench.registry import MODELS

_KERNEL = 5
# activations that never decrease: max-pooling before them gives what it gives after them (GELU and SiLU dip)
_NON_DECREASING = (nn.ReLU, nn.LeakyReLU, nn.Identity)
_POOL = 2


def _feature_size(size: int) -> int:
    """Side of the feature map after two (5×5 conv, 2×2 max-pool) stages, no padding: 32 -> 5, 28 -> 4."""
    for _ in range(2):
        size = (size - _KERNEL + 1) // _POOL
    return size


def _widths(hidden: int | Sequence[int]) -> tuple[int, ...]:
    """Hidden layer widths: one int is one layer; a list names each layer, an empty list none."""
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(f"hidden must be a positive int or a list of them, got {hidden!r}")
    return widths


class SmallCNN(nn.Module):
    """conv(5×5, c1) -> pool -> act -> conv(5×5, c2) -> pool -> act -> flatten -> [linear(h_i) -> act]... -> linear.

    `forward_features` returns the (B, c2, h, w) map; `forward_head` flattens it and applies the hidden layers,
    dropout and the classifier. `num_features` is the width the classifier sees (the last hidden width, or the
    flattened map without hidden layers).

    Args:
        num_outputs: Width of the classifier.
        in_chans: Input channels.
        img_size: (H, W) of the inputs; the flatten size depends on it (28 -> 16·4·4, 32 -> 16·5·5).
        channels: Widths of the two convolutions.
        hidden: Width of the one hidden linear layer, or the widths of several (`[120, 84]`: LeNet-5's).
        act_layer: Activation name or class.
        drop_rate: Dropout before the classifier.

    Raises:
        ValueError: if `img_size` is too small for two 5×5 convolutions and 2×2 pools (below 16×16), or for a
            hidden width that is not a positive int.
    """

    def __init__(
        self,
        num_outputs: int,
        in_chans: int = 3,
        img_size: tuple[int, int] = (32, 32),
        channels: tuple[int, int] = (6, 16),
        hidden: int | Sequence[int] = 144,
        act_layer: str | type[nn.Module] = "leaky_relu",
        drop_rate: float = 0.0,
    ):
        super().__init__()
        H, W = img_size
        h, w = _feature_size(H), _feature_size(W)
        if h < 1 or w < 1:
            raise ValueError(f"small_cnn needs inputs of at least 16x16, got img_size {H}x{W}")
        act = get_act_layer(act_layer)
        self.conv1 = nn.Conv2d(in_chans, channels[0], _KERNEL)
        self.act1 = act()
        self.pool_first = act in _NON_DECREASING
        self.pool1 = nn.MaxPool2d(_POOL)
        self.conv2 = nn.Conv2d(channels[0], channels[1], _KERNEL)
        self.act2 = act()
        self.pool2 = nn.MaxPool2d(_POOL)
        widths = _widths(hidden)
        in_features = channels[1] * h * w
        # the first hidden layer keeps the attribute names of the one-layer net, so its checkpoints still load
        self.hidden = nn.Linear(in_features, widths[0]) if widths else nn.Identity()
        self.act3 = act() if widths else nn.Identity()
        in_features = widths[0] if widths else in_features
        more: list[nn.Module] = []
        for width in widths[1:]:
            more += [nn.Linear(in_features, width), act()]
            in_features = width
        self.hidden_more = nn.Sequential(*more)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_outputs)
        self.num_outputs = num_outputs
        self.num_features = in_features
        self.cam_layer = "conv2"
        self.feature_layout = "NCHW"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # pool, then activate: the same values when the activation never decreases (max-pooling commutes with it),
        # with the activation on a quarter of the elements, forward and backward (a third of a CPU step at 28 px)
        if self.pool_first:
            x = self.act1(self.pool1(self.conv1(x)))
            return self.act2(self.pool2(self.conv2(x)))  # (B, c2, h, w)
        x = self.pool1(self.act1(self.conv1(x)))
        return self.pool2(self.act2(self.conv2(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)  # (B, c2·h·w)
        x = self.drop(self.hidden_more(self.act3(self.hidden(x))))  # (B, num_features)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_outputs: int) -> None:
        """Replace the classifier with a freshly initialised one of `num_outputs` units (the hidden layer stays)."""
        self.num_outputs = num_outputs
        self.fc = nn.Linear(self.num_features, num_outputs)


@MODELS.register("small_cnn")
def small_cnn(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> SmallCNN:
    """The lab's CNN: convs (6, 16), hidden 144 (`hidden=[120, 84]`: the lab's 62,006), LeakyReLU; 10 outputs."""
    return SmallCNN(num_outputs, in_chans=in_chans, img_size=img_size, **kwargs)
