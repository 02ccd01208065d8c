"""`cvt_13`, `cvt`: CvT, the Convolutional vision Transformer (Wu et al., ICCV 2021, https://arxiv.org/abs/2103.15808).

Written from the paper; the official code (microsoft/CvT, `lib/models/cls_cvt.py`, MIT licence) was read to settle
details the paper leaves out, none of it is copied. timm has no CvT, so the blocks are ours, built from timm's
`Mlp`, `DropPath` and `trunc_normal_`.

Structure (the paper's Fig. 2 and Table 2):
- Stages, each opened by a *convolutional token embedding*: an overlapping strided conv (7×7 stride 4 padding 2 in
  stage 1, 3×3 stride 2 padding 1 later, the official paddings) whose map is flattened to tokens and LayerNorm-ed.
- Pre-norm transformer blocks (MLP ratio 4, GELU) whose attention uses *convolutional projection*: q, k and v
  each come from a depthwise 3×3 conv + BatchNorm on the token map, then a linear layer. q keeps stride 1; k and v
  use stride 2 ("squeezed" k/v), so attention is N × N/4. No position embedding anywhere.
- A class token only in the last stage; it bypasses the conv projections (it is concatenated to q, k and v after
  them, as in the official code). The classifier reads the final LayerNorm of the class token.

Decisions where the paper is silent or a choice was needed:
- Attention scale is 1/sqrt(head_dim), the usual multi-head scale; the official code uses 1/sqrt(dim) (the whole
  width). Parameter counts are unaffected.
- `drop_path_rate` is spread linearly over all blocks (timm's convention) and defaults to 0; the official CvT-13
  recipe uses 0.1 in stage 3 only.
- `forward_features` returns the last stage's tokens after the final LayerNorm, class token first:
  (B, 1 + h·w, D), so `feature_layout` is "NLC"; `num_prefix_tokens` (1) and `grid_size` (h, w at the built
  `img_size`) say how to turn the rest back into a map. The norm is per token, so normalising every token instead of
  only the class token changes nothing for the head.
- Small inputs: strides 4, 2, 2 with the official paddings take 28 px to 7, 4, 2 and 32 px to 8, 4, 2 tokens per
  side, so the paper's layout runs as is. `small_input=True` makes the stage-1 embedding stride 2 (padding 3),
  giving 32 -> 16, 8, 4 for more tokens on 28–32 px data. A side too small for the stage-1 embedding conv (below 3 px;
  `small_input` takes any size) is refused at build time.

CvT-13 (dims 64/192/384, heads 1/3/6, depths 1/2/10) has 19.98M parameters at 224 px with 1000 outputs (paper: 20M).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visionbench.registry import MODELS

# (kernel, stride, padding) of each stage's token-embedding conv: stage 1, then every later stage (paper Table 2).
_FIRST_EMBED = (7, 4, 2)
_FIRST_EMBED_SMALL = (7, 2, 3)
_LATER_EMBED = (3, 2, 1)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _embed_cfgs(num_stages: int, small_input: bool) -> list[tuple[int, int, int]]:
    first = _FIRST_EMBED_SMALL if small_input else _FIRST_EMBED
    return [first] + [_LATER_EMBED] * (num_stages - 1)


def _grids(side: int, cfgs: Sequence[tuple[int, int, int]]) -> list[int]:
    """Token-grid side after each stage's embedding conv (224 -> 56, 28, 14; 32 -> 8, 4, 2)."""
    sides = []
    for kernel, stride, padding in cfgs:
        side = _conv_out(side, kernel, stride, padding)
        sides.append(side)
    return sides


class ConvEmbed(nn.Module):
    """Convolutional token embedding: overlapping strided conv, then LayerNorm over each token's channels."""

    def __init__(self, in_chs: int, dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, dim, kernel, stride, padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.conv(x)  # (B, D, H, W)
        B, D, H, W = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), (H, W)  # (B, H·W, D)


def _dw_conv_bn(dim: int, kernel: int, stride: int) -> nn.Sequential:
    """The paper's convolutional projection: depthwise conv (no bias) + BatchNorm on the token map."""
    conv = nn.Conv2d(dim, dim, kernel, stride, padding=kernel // 2, groups=dim, bias=False)
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(dim)))


class ConvAttention(nn.Module):
    """Multi-head self-attention whose q, k and v come from depthwise-conv projections of the token map.

    `conv_proj_q` keeps the grid (stride `q_stride`, 1); `conv_proj_k` and `conv_proj_v` subsample it (stride
    `kv_stride`, 2), so a 2×2 grid attends to one key. Prefix (class) tokens skip the convolutions and are
    prepended to q, k and v before the linear projections.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel: int = 3,
        q_stride: int = 1,
        kv_stride: int = 2,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_prefix_tokens: int = 0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.num_prefix_tokens = num_prefix_tokens
        self.conv_proj_q = _dw_conv_bn(dim, kernel, q_stride)
        self.conv_proj_k = _dw_conv_bn(dim, kernel, kv_stride)
        self.conv_proj_v = _dw_conv_bn(dim, kernel, kv_stride)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv_stride = kv_stride  # attention rollout maps the subsampled keys back onto the query grid with it
        self.attn_drop = nn.Dropout(attn_drop)  # a module, so that attention rollout can catch the probabilities
        self.fused_attn = True  # False: explicit softmax(q kᵀ / √d) through attn_drop (attention rollout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, conv: nn.Module, linear: nn.Linear, x_map: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        B = x_map.shape[0]
        x = conv(x_map).flatten(2).transpose(1, 2)  # (B, h·w, C), h·w smaller for k and v
        x = linear(torch.cat([prefix, x], dim=1))  # (B, P + h·w, C)
        return x.reshape(B, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, P + h·w, hd)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        H, W = grid
        prefix, x = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        x_map = x.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        q = self._heads(self.conv_proj_q, self.proj_q, x_map, prefix)  # (B, nh, N, hd)
        k = self._heads(self.conv_proj_k, self.proj_k, x_map, prefix)  # (B, nh, N_kv, hd)
        v = self._heads(self.conv_proj_v, self.proj_v, x_map, prefix)  # (B, nh, N_kv, hd)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, nh, N, N_kv)
            x = self.attn_drop(attn.softmax(-1)) @ v  # (B, nh, N, hd)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(x))


class ConvBlock(nn.Module):
    """Pre-norm transformer block with convolutional-projection attention and an MLP (timm's `Mlp`)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path: float,
        num_prefix_tokens: int,
    ):
        from timm.layers import DropPath, Mlp  # here: importing the zoo must not pay for timm (`train`'s start-up)

        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ConvAttention(
            dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=drop_rate,
            num_prefix_tokens=num_prefix_tokens,
        )  # fmt: skip
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop_rate)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), grid))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """Token embedding, optional class token, then `depth` blocks; returns tokens (B, P + H·W, D) and (H, W)."""

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        num_heads: int,
        embed_cfg: tuple[int, int, int],
        mlp_ratio: float,
        qkv_bias: bool,
        cls_token: bool,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rates: Sequence[float],
    ):
        super().__init__()
        self.embed = ConvEmbed(in_chs, dim, *embed_cfg)
        self.num_prefix_tokens = int(cls_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            ConvBlock(dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate, self.num_prefix_tokens)
            for rate in drop_path_rates
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = self.embed(x)  # (B, H·W, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + H·W, D)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x, grid)
        return x, grid


class CvT(nn.Module):
    """CvT with any number of stages (the paper uses three); the class token lives in the last stage.

    Args:
        num_outputs: Width of the classifier.
        in_chans: Input channels.
        img_size: (H, W) of the inputs; only checked (no position embedding), and sets `grid_size`.
        dims: Embedding width of each stage.
        heads: Attention heads of each stage; each width must divide by its heads.
        depths: Transformer blocks in each stage.
        mlp_ratio: MLP hidden width over the embedding width.
        qkv_bias: Bias in the q, k, v linear projections (the official models use it).
        drop_rate: Dropout after the embeddings, in the MLPs and attention output, and before the classifier.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, rising linearly to this value over all blocks.
        small_input: Stage-1 embedding stride 2 instead of 4, for 28–64 px images.

    Raises:
        ValueError: on per-stage lists of different lengths, a width not divisible by its heads, or an `img_size`
            too small for the embedding convolutions.
    """

    def __init__(
        self,
        num_outputs: int,
        in_chans: int = 3,
        img_size: tuple[int, int] = (32, 32),
        dims: Sequence[int] = (64, 192, 384),
        heads: Sequence[int] = (1, 3, 6),
        depths: Sequence[int] = (1, 2, 10),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        small_input: bool = False,
    ):
        super().__init__()
        dims, heads, depths = tuple(dims), tuple(heads), tuple(depths)
        if not (len(dims) == len(heads) == len(depths)) or not dims:
            raise ValueError(f"dims {dims}, heads {heads} and depths {depths} need one entry per stage each")
        if min(depths) < 1 or any(d % h for d, h in zip(dims, heads, strict=True)):
            raise ValueError(
                f"every stage needs a block and a width divisible by its heads: dims {dims}, heads {heads}"
            )
        embed_cfgs = _embed_cfgs(len(dims), small_input)
        H, W = img_size
        grid_h, grid_w = _grids(H, embed_cfgs), _grids(W, embed_cfgs)
        if min(grid_h + grid_w) < 1:
            least = next(s for s in range(1, 64) if min(_grids(s, embed_cfgs)) >= 1)
            raise ValueError(f"cvt needs inputs of at least {least}x{least}, got img_size {H}x{W}")
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # cpu: also under a meta default
        stages, in_chs, start = [], in_chans, 0
        for i, (dim, num_heads, depth) in enumerate(zip(dims, heads, depths, strict=True)):
            last = i == len(dims) - 1
            stages.append(
                CvTStage(
                    in_chs, dim, depth, num_heads, embed_cfgs[i], mlp_ratio, qkv_bias, last, drop_rate,
                    attn_drop_rate, rates[start : start + depth],
                )
            )  # fmt: skip
            in_chs, start = dim, start + depth
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_outputs)
        self.num_outputs = num_outputs
        self.num_features = dims[-1]
        self.num_prefix_tokens = 1
        self.grid_size = (grid_h[-1], grid_w[-1])
        # Grad-CAM layer: the head reads only the class token, so in the final norm's output the patch tokens get
        # no gradient and a CAM there is zero. The last block's norm1 output feeds the attention through which the
        # class token reads every patch token, so its patch tokens carry the gradient; its (B, 1 + h·w, D) output
        # becomes a (B, D, h, w) map once the class token is dropped (grad-cam's advice for ViT: blocks[-1].norm1).
        self.cam_layer = f"stages.{len(stages) - 1}.blocks.{depths[-1] - 1}.norm1"
        self.feature_layout = "NLC"
        self.apply(self._init_weights)
        from timm.layers import trunc_normal_

        trunc_normal_(self.stages[-1].cls_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        from timm.layers import trunc_normal_

        if isinstance(module, nn.Linear):  # the official init ("trunc_norm"); convs and norms keep torch's
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages[:-1]:
            x, (H, W) = stage(x)  # (B, H·W, D_i), no prefix tokens before the last stage
            x = x.transpose(1, 2).reshape(x.shape[0], -1, H, W)  # (B, D_i, H, W)
        x, _ = self.stages[-1](x)  # (B, 1 + h·w, D)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])  # (B, D): the class token
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_head(self, num_outputs: int) -> None:
        """Replace the classifier with a freshly initialised one of `num_outputs` units."""
        self.num_outputs = num_outputs
        self.head = nn.Linear(self.num_features, num_outputs)
        self._init_weights(self.head)


@MODELS.register("cvt")
def cvt(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> CvT:
    """CvT with any dims, heads and depths per stage (defaults: CvT-13)."""
    return CvT(num_outputs, in_chans=in_chans, img_size=img_size, **kwargs)


@MODELS.register("cvt_13")
def cvt_13(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> CvT:
    """CvT-13: dims (64, 192, 384), heads (1, 3, 6), depths (1, 2, 10); 19.98M parameters at 224 px, 1000 outputs."""
    model_args = dict(dims=(64, 192, 384), heads=(1, 3, 6), depths=(1, 2, 10))
    return CvT(num_outputs, in_chans=in_chans, img_size=img_size, **{**model_args, **kwargs})
