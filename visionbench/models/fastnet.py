"""`fastnet`: the zoo's fast default network for small images, modelled on airbench94's design.

Design after KellerJordan/cifar10-airbench (Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
https://arxiv.org/abs/2404.00498); written from the description, not copied:
- a frozen 2×2 conv without bias whose filters whiten 2×2 patches (PCA of training patches, `init_from_data`),
  with each eigenvector used with both signs, so it has 2·C·4 output channels (24 for RGB, 8 for grey);
- conv groups `conv -> max-pool(2) -> BN -> GELU -> conv -> BN -> GELU` without residuals, convs initialised
  to the identity ("dirac") on their first in_channels filters;
- BatchNorm with a high running-stat momentum and (by default) frozen weights fixed to 1, learnable biases;
- global max-pool, a linear head without bias and logits scaled down by `logit_scale` (1/9).
The defaults, widths (64, 256, 256), give airbench94's 1.97M parameters at 3×32×32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionbench.models.layers import get_act_layer
from visionbench.registry import MODELS


def _dirac_conv(in_chs: int, out_chs: int) -> nn.Conv2d:
    """3×3 'same' conv without bias; its first min(in, out) filters start as the identity, the rest at random."""
    conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(in_chs, out_chs)])
    return conv


def _batch_norm(num_features: int, momentum: float, eps: float, weight_frozen: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
    if weight_frozen:  # airbench: scale fixed at 1, only the shift is learnt
        bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    """conv -> max-pool(2) -> BN -> act -> conv -> BN -> act: one resolution level, half the input's side."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        act_layer: type[nn.Module],
        bn_momentum: float,
        bn_eps: float,
        bn_weight_frozen: bool,
        pool_ceil_mode: bool,
    ):
        super().__init__()
        self.conv1 = _dirac_conv(in_chs, out_chs)
        self.pool = nn.MaxPool2d(2, ceil_mode=pool_ceil_mode)
        self.bn1 = _batch_norm(out_chs, bn_momentum, bn_eps, bn_weight_frozen)
        self.act1 = act_layer()
        self.conv2 = _dirac_conv(out_chs, out_chs)
        self.bn2 = _batch_norm(out_chs, bn_momentum, bn_eps, bn_weight_frozen)
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.pool(self.conv1(x))))
        return self.act2(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    """Patch-whitening stem, plain conv groups, global max-pool and a scaled linear head (airbench94's shape).

    Args:
        num_outputs: Width of the head.
        in_chans: Input channels.
        img_size: (H, W) of the inputs; only checked (the network is fully convolutional up to a global pool).
        widths: Output width of each conv group; one 2× downsampling per group.
        act_layer: Activation name or class, used after the whitening conv and in the groups.
        bn_momentum: PyTorch's BatchNorm momentum, the weight of the new batch's statistics (0.4 = airbench's 0.6
            decay).
        bn_eps: BatchNorm epsilon.
        bn_weight_frozen: Fix every BatchNorm weight to 1 (requires_grad False); biases stay learnable.
        logit_scale: Factor applied to the logits.
        whiten_eps: Added to the patch covariance's eigenvalues before the inverse square root (`init_from_data`).
        pool_ceil_mode: Max-pool with ceil_mode. False (airbench: 31 -> 15 -> 7 -> 3 at 32×32) drops the last odd
            row and column and costs ~20% fewer FLOPs; True (31 -> 16 -> 8 -> 4) keeps every pixel.

    Raises:
        ValueError: if `img_size` is too small for the 2×2 stem and one 2× pool per group.
    """

    def __init__(
        self,
        num_outputs: int,
        in_chans: int = 3,
        img_size: tuple[int, int] = (32, 32),
        widths: Sequence[int] = (64, 256, 256),
        act_layer: str | type[nn.Module] = "gelu",
        bn_momentum: float = 0.4,
        bn_eps: float = 1e-5,
        bn_weight_frozen: bool = True,
        logit_scale: float = 1 / 9,
        whiten_eps: float = 5e-4,
        pool_ceil_mode: bool = False,
    ):
        super().__init__()
        side = min(img_size) - 1  # the 2×2 stem conv has no padding: 32 -> 31, 28 -> 27
        for _ in widths:
            side = -(-side // 2) if pool_ceil_mode else side // 2
        if side < 1:
            raise ValueError(f"fastnet with {len(widths)} conv groups cannot take img_size {img_size[0]}x{img_size[1]}")
        act = get_act_layer(act_layer)
        whiten_width = 2 * in_chans * 2 * 2  # each eigenvector of the (C·2·2)-dim patch covariance, with both signs
        self.whiten = nn.Conv2d(in_chans, whiten_width, kernel_size=2, bias=False)
        self.whiten.weight.requires_grad_(False)
        self.whiten_eps = whiten_eps
        self._init_whiten_orthogonal()
        self.whiten_act = act()
        groups = []
        in_chs = whiten_width
        for width in widths:
            groups.append(ConvGroup(in_chs, width, act, bn_momentum, bn_eps, bn_weight_frozen, pool_ceil_mode))
            in_chs = width
        self.groups = nn.Sequential(*groups)
        self.logit_scale = logit_scale
        self.num_features = in_chs
        self.head = nn.Linear(in_chs, num_outputs, bias=False)
        self.num_outputs = num_outputs
        self.cam_layer = f"groups.{len(groups) - 1}.conv2"
        self.feature_layout = "NCHW"

    @torch.no_grad()
    def _init_whiten_orthogonal(self) -> None:
        """Valid default before `init_from_data`: a random orthogonal basis of patch space, with both signs."""
        half = self.whiten.out_channels // 2
        basis = nn.init.orthogonal_(torch.empty(half, half))  # (C·4, C·4)
        weight = basis.reshape(half, *self.whiten.weight.shape[1:])  # (C·4, C, 2, 2)
        self.whiten.weight.copy_(torch.cat([weight, -weight]))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float | None = None, chunk_size: int = 512) -> None:
        """Set the frozen stem to whiten the 2×2 patches of `images` (airbench's patch-whitening init).

        The filters are the eigenvectors of the patches' covariance divided by sqrt(eigenvalue + eps), in
        decreasing eigenvalue order, followed by their negatives. On the fitted data the first half of the
        stem's output channels then has covariance ≈ I (less where eigenvalues are not ≫ eps). airbench fits
        on 5,000 training images; the covariance is accumulated in float64 over chunks, so memory stays small.

        Args:
            images: Normalised float images (N, C, H, W), any device.
            eps: Eigenvalue regulariser; defaults to the constructor's `whiten_eps`.
            chunk_size: Images per accumulation step.

        Raises:
            ValueError: if `images` is not a float (N, C, H, W) batch with the model's channel count.
        """
        weight = self.whiten.weight
        C, kh, kw = weight.shape[1:]
        if images.ndim != 4 or images.shape[1] != C or not images.is_floating_point():
            raise ValueError(
                f"init_from_data expects float images (N, {C}, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        eps = self.whiten_eps if eps is None else eps
        dim = C * kh * kw
        patch_sum = torch.zeros(dim, dtype=torch.float64, device=images.device)
        outer_sum = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
        count = 0
        for chunk in images.split(chunk_size):
            patches = F.unfold(chunk.double(), (kh, kw))  # (b, C·kh·kw, L), channel-major like conv weights
            patches = patches.transpose(1, 2).reshape(-1, dim)  # (b·L, C·kh·kw)
            patch_sum += patches.sum(0)
            outer_sum += patches.T @ patches
            count += patches.shape[0]
        mean = patch_sum / count
        cov = outer_sum / count - torch.outer(mean, mean)  # (dim, dim)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0), eigenvectors.flip(1)
        filters = eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]  # (dim, dim): row i = i-th component
        filters = filters.reshape(dim, C, kh, kw)
        weight.copy_(torch.cat([filters, -filters]).to(device=weight.device, dtype=weight.dtype))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.whiten_act(self.whiten(x))  # (B, 2·C·4, H-1, W-1)
        return self.groups(x)  # (B, widths[-1], h, w)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.amax(dim=(2, 3))  # (B, C): global max-pool
        return x if pre_logits else self.head(x) * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_outputs: int) -> None:
        """Replace the head with a freshly initialised bias-free linear layer of `num_outputs` units."""
        self.num_outputs = num_outputs
        self.head = nn.Linear(self.num_features, num_outputs, bias=False)


@MODELS.register("fastnet")
def fastnet(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> FastNet:
    """airbench94-sized: widths (64, 256, 256), 1.97M parameters at 3×32×32."""
    return FastNet(num_outputs, in_chans=in_chans, img_size=img_size, **kwargs)


@MODELS.register("fastnet_s")
def fastnet_s(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> FastNet:
    """A CPU-sized variant: widths (32, 64, 64)."""
    model_args = dict(widths=(32, 64, 64))
    return FastNet(num_outputs, in_chans=in_chans, img_size=img_size, **{**model_args, **kwargs})
