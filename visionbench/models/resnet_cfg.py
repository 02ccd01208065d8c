"""`resnet_cfg`: a ResNet for small images whose shape is all hyper-parameters, after "ResNet under 5M parameters".

The study (Thakkar et al., "Efficient ResNets: Residual Network Design", https://arxiv.org/abs/2306.12100,
building on kuangliu/pytorch-cifar's CIFAR ResNet) searches N residual layers (stages) with, per stage i,
B_i basic blocks, C_i channels, F_i conv kernel size and K_i skip-connection kernel size, plus the average-pool
size P before the classifier. Here those are `blocks`, `channels`, `conv_kernels`, `skip_kernels` and
`pool_output` (P as the pooled map's side) or `pool_size` (P as the pooling kernel). The study's README calls P
a kernel size, but its final P = [1, 1] is an output of 1×1 (global average pooling): only that reading gives its
4,435,082 parameters (N=2, C_1=128, B=[3,3], F=[3,3], K=[3,3]); a 1×1 kernel keeps the 16×16 map and a 655k
classifier. Small-image stem: one 3×3 conv, no max-pool; stage 1 has stride 1, later stages stride 2.
Optional regularisers: timm's DropBlock2d in the last two stages (as timm's ResNet places it) and dropout
before the classifier. Basic block after He et al., 2015 (https://arxiv.org/abs/1512.03385).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionbench.models.layers import get_act_layer
from visionbench.registry import MODELS


def _per_stage(value: int | Sequence[int], num_stages: int, name: str) -> tuple[int, ...]:
    """An int applies to every stage; a sequence must have one entry per stage."""
    values = (value,) * num_stages if isinstance(value, int) else tuple(value)
    if len(values) != num_stages:
        raise ValueError(f"{name} has {len(values)} entries, expected one per stage ({num_stages})")
    return values


def _conv_out(size: int, kernel: int, stride: int) -> int:
    """Output side of a conv with padding kernel // 2."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _pool_choice(
    pool_size: int | None, pool_output: int | None, map_size: tuple[int, int]
) -> tuple[int | None, int | None]:
    """(pool_size, pool_output) with exactly one set: P as a kernel (default 4) or as the pooled map's side."""
    if pool_size is not None and pool_output is not None:
        raise ValueError(
            f"pool_size ({pool_size}, P as a kernel) and pool_output ({pool_output}, P as the pooled side): give one"
        )
    if pool_output is None:
        pool_size = 4 if pool_size is None else pool_size
        if pool_size < 1:
            raise ValueError(f"pool_size must be positive, got {pool_size}")
        return pool_size, None
    H, W = map_size
    if not 1 <= pool_output <= min(H, W):
        raise ValueError(f"pool_output must be between 1 and the last map's side ({H}x{W}), got {pool_output}")
    return None, pool_output


def _pooled_area(pool_size: int | None, pool_output: int | None, map_size: tuple[int, int]) -> int:
    """Positions per channel after pooling: P² for an output side, (H // P)·(W // P) for a kernel."""
    if pool_output is not None:
        return pool_output**2
    H, W = map_size
    return (H // min(pool_size, H)) * (W // min(pool_size, W))


class BasicBlock(nn.Module):
    """conv(F) -> BN -> [DropBlock] -> act -> conv(F) -> BN, plus the shortcut, then act.

    The shortcut is a K×K conv + BN only where the shape changes (stride or width), identity otherwise, as in
    kuangliu/pytorch-cifar's block that the study modified.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        conv_kernel: int,
        skip_kernel: int,
        act_layer: type[nn.Module],
        drop_block: float = 0.0,
        drop_block_size: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, conv_kernel, stride, padding=conv_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.drop_block = nn.Identity()
        if drop_block > 0:
            from timm.layers import DropBlock2d  # only here: timm's import is most of a small run's start-up

            self.drop_block = DropBlock2d(drop_block, drop_block_size)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, conv_kernel, 1, padding=conv_kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, skip_kernel, stride, padding=skip_kernel // 2, bias=False),
                nn.BatchNorm2d(out_chs),
            )
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.drop_block(self.bn1(self.conv1(x))))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class ResNetCfg(nn.Module):
    """A configurable small-image ResNet (see the module docstring for the hyper-parameters' meaning).

    Args:
        num_outputs: Width of the classifier.
        in_chans: Input channels.
        img_size: (H, W) of the inputs; sets the flatten size after pooling, hence `num_features`.
        blocks: B_i, basic blocks per stage; its length is the number of stages N.
        channels: C_i, width of each stage.
        base_channels: C_1 alone, every later stage doubling it (C_i = C_1 · 2^(i-1), the study's rule); replaces
            `channels`, so that a search can vary the number of stages and the width independently.
        conv_kernels: F_i, odd conv kernel size, one int for all stages or one per stage.
        skip_kernels: K_i, odd shortcut conv kernel size, one int or one per stage.
        pool_size: P read as the average-pool kernel before the classifier (clipped to the map when the map is
            smaller); 4 when neither it nor `pool_output` is given.
        pool_output: P read as the side of the pooled map: adaptive average pooling to P×P (1: global pooling).
        stem_channels: Width of the 3×3 stem conv; defaults to channels[0].
        drop_rate: Dropout on the flattened features before the classifier.
        drop_block: DropBlock probability in the blocks of the last two stages (timm's DropBlock2d).
        drop_block_size: DropBlock square side.
        act_layer: Activation name or class.

    Raises:
        ValueError: on inconsistent per-stage lists, an empty stage, even kernel sizes, both `pool_size` and
            `pool_output`, or a `pool_output` larger than the last map.
    """

    def __init__(
        self,
        num_outputs: int,
        in_chans: int = 3,
        img_size: tuple[int, int] = (32, 32),
        blocks: Sequence[int] = (2, 1, 1, 1),
        channels: Sequence[int] = (64, 128, 256, 512),
        conv_kernels: int | Sequence[int] = 3,
        skip_kernels: int | Sequence[int] = 1,
        pool_size: int | None = None,
        pool_output: int | None = None,
        base_channels: int | None = None,
        stem_channels: int | None = None,
        drop_rate: float = 0.0,
        drop_block: float = 0.0,
        drop_block_size: int = 3,
        act_layer: str | type[nn.Module] = "relu",
    ):
        super().__init__()
        num_stages = len(blocks)
        if base_channels is not None:
            if base_channels < 1:
                raise ValueError(f"base_channels must be positive, got {base_channels}")
            channels = tuple(base_channels * 2**i for i in range(num_stages))
        channels = _per_stage(channels, num_stages, "channels")
        conv_kernels = _per_stage(conv_kernels, num_stages, "conv_kernels")
        skip_kernels = _per_stage(skip_kernels, num_stages, "skip_kernels")
        if num_stages == 0 or min(blocks) < 1:
            raise ValueError(f"blocks {tuple(blocks)} must name at least one stage, each with at least one block")
        if any(k % 2 == 0 for k in conv_kernels + skip_kernels):
            raise ValueError(f"conv_kernels {conv_kernels} and skip_kernels {skip_kernels} must be odd")
        act = get_act_layer(act_layer)
        stem_channels = stem_channels or channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels), act()
        )
        H, W = img_size
        stages = []
        in_chs = stem_channels
        for i, (depth, out_chs, conv_k, skip_k) in enumerate(
            zip(blocks, channels, conv_kernels, skip_kernels, strict=True)
        ):
            stride = 1 if i == 0 else 2
            H, W = _conv_out(H, conv_k, stride), _conv_out(W, conv_k, stride)
            block_drop = drop_block if i >= num_stages - 2 else 0.0
            layers = []
            for j in range(depth):
                layers.append(
                    BasicBlock(
                        in_chs, out_chs, stride if j == 0 else 1, conv_k, skip_k, act, block_drop, drop_block_size
                    )
                )
                in_chs = out_chs
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool_size, self.pool_output = _pool_choice(pool_size, pool_output, (H, W))
        self.num_features = in_chs * _pooled_area(self.pool_size, self.pool_output, (H, W))
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_outputs)
        self.num_outputs = num_outputs
        last = len(stages) - 1
        self.cam_layer = f"stages.{last}.{len(stages[last]) - 1}.conv2"
        self.feature_layout = "NCHW"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, C_N, h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.pool_output is not None:
            x = F.adaptive_avg_pool2d(x, self.pool_output)  # (B, C, P, P)
        else:
            x = F.avg_pool2d(x, (min(self.pool_size, H), min(self.pool_size, W)))  # (B, C, H // P, W // P)
        x = self.drop(x.flatten(1))  # (B, num_features)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_outputs: int) -> None:
        """Replace the classifier with a freshly initialised one of `num_outputs` units."""
        self.num_outputs = num_outputs
        self.fc = nn.Linear(self.num_features, num_outputs)


@MODELS.register("resnet_cfg")
def resnet_cfg(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> ResNetCfg:
    """The study's defaults: B=(2,1,1,1), C=(64,128,256,512), F=3, K=1, P=4 (a kernel); ~4.9M parameters at 32×32."""
    return ResNetCfg(num_outputs, in_chans=in_chans, img_size=img_size, **kwargs)


@MODELS.register("resnet_cfg_small")
def resnet_cfg_small(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> ResNetCfg:
    """A CPU-sized variant for smoke tests: three stages of one block, C=(16,32,64)."""
    model_args = dict(blocks=(1, 1, 1), channels=(16, 32, 64))
    return ResNetCfg(num_outputs, in_chans=in_chans, img_size=img_size, **{**model_args, **kwargs})
