"""`cnn_t`: CNN-T, a CNN-Transformer hybrid: convolutional stages feeding a transformer encoder.

After Li, Wu and Xiong, "CNN-Transformer hybrid" (CNN-T), Electronics 2022, 11, 1200
(https://doi.org/10.3390/electronics11081200).

What is taken from the paper: its overall design only, as known from its description: a few convolutional stages
extract a local feature map, the map is flattened into a token sequence with a learnable position embedding and a
class token, a transformer encoder of N layers models global context, and the classifier reads the class token.
The paper's layer table (exact widths, kernel sizes, depth, heads) could not be retrieved offline, so every number
below is our decision, chosen to give a model of a few million parameters that suits 28–300 px inputs:

- Conv stages: `conv_widths` (32, 64, 128), each conv 3×3 (padding 1, no bias) -> BatchNorm -> ReLU -> 2×2
  max-pool with `ceil_mode`, so odd sides keep their last row (28 -> 14 -> 7 -> 4 tokens a side; 32 -> 4;
  64 -> 8; 150 -> 19; 224 -> 28; 300 -> 38). Overall stride 2^stages; an input side below that is refused.
- Token embedding: a 1×1 conv from the last conv width to `embed_dim` (256), then flatten (timm's `HybridEmbed`
  does the same projection).
- Position embedding: learned, one per token plus the class token, built for the `img_size` given to the builder.
  An input of another size is an error unless `dynamic_img_size=True`, which resamples it bicubically (timm's
  `resample_abs_pos_embed`), as timm's ViT does.
- Encoder: `depth` 6 of timm's pre-norm ViT `Block` (`num_heads` 8, MLP ratio 4, GELU, qkv bias), final LayerNorm.
  ~4.9M parameters at 32 px with 10 outputs.
- `forward_features` returns the normalised tokens (B, 1 + h·w, D), class token first ("NLC"); `grid_size` and
  `num_prefix_tokens` say how to turn them back into a map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visionbench.models.layers import get_act_layer
from visionbench.registry import MODELS


def _conv_stage(in_chs: int, out_chs: int, act_layer: type[nn.Module]) -> nn.Sequential:
    """conv3×3 -> BN -> act -> 2×2 max-pool (ceil mode: an odd side rounds up)."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        act_layer(),
        nn.MaxPool2d(2, ceil_mode=True),
    )


class CNNT(nn.Module):
    """Conv stages -> 1×1 projection to tokens -> class token + position embedding -> ViT blocks -> head.

    Args:
        num_outputs: Width of the classifier.
        in_chans: Input channels.
        img_size: (H, W) of the inputs; sizes the position embedding.
        conv_widths: Width of each conv stage; every stage halves the resolution.
        embed_dim: Token width D.
        depth: Transformer encoder layers.
        num_heads: Attention heads; `embed_dim` must divide by them.
        mlp_ratio: MLP hidden width over D.
        act_layer: Activation of the conv stages (name or class).
        drop_rate: Dropout after the position embedding, in the blocks and before the classifier.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, rising linearly to this value over the blocks.
        dynamic_img_size: Resample the position embedding for inputs of another size instead of refusing them.

    Raises:
        ValueError: for an `img_size` smaller than the conv stages' overall stride, no conv stage, or an
            `embed_dim` not divisible by `num_heads`.
    """

    def __init__(
        self,
        num_outputs: int,
        in_chans: int = 3,
        img_size: tuple[int, int] = (32, 32),
        conv_widths: Sequence[int] = (32, 64, 128),
        embed_dim: int = 256,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        act_layer: str | type[nn.Module] = "relu",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dynamic_img_size: bool = False,
    ):
        super().__init__()
        conv_widths = tuple(conv_widths)
        if not conv_widths or depth < 1 or embed_dim % num_heads:
            raise ValueError(
                f"need a conv stage, a block and embed_dim divisible by num_heads: conv_widths {conv_widths}, "
                f"depth {depth}, embed_dim {embed_dim}, num_heads {num_heads}"
            )
        H, W = img_size
        stride = 2 ** len(conv_widths)
        if min(H, W) < stride:
            raise ValueError(
                f"cnn_t with {len(conv_widths)} conv stages needs inputs of at least {stride}x{stride}, "
                f"got img_size {H}x{W}"
            )
        # timm is imported where a model is built, so that importing the zoo (every `train`) does not pay for it
        from timm.layers import LayerNorm, trunc_normal_
        from timm.models.vision_transformer import Block

        act = get_act_layer(act_layer)
        widths = (in_chans,) + conv_widths
        self.stem = nn.Sequential(*(_conv_stage(widths[i], widths[i + 1], act) for i in range(len(conv_widths))))
        self.proj = nn.Conv2d(conv_widths[-1], embed_dim, 1)
        h, w = H, W
        for _ in conv_widths:
            h, w = -(-h // 2), -(-w // 2)  # ceil-mode pooling
        self.grid_size = (h, w)
        self.num_prefix_tokens = 1
        self.dynamic_img_size = dynamic_img_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + h * w, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also under a meta default
        self.blocks = nn.Sequential(
            *(
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                      drop_path=rate)
                for rate in rates
            )
        )  # fmt: skip
        self.norm = LayerNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_outputs)
        self.num_outputs = num_outputs
        self.num_features = embed_dim
        # Grad-CAM layer: the head reads only the class token, so patch tokens get no gradient after the last
        # attention. The last block's norm1 output feeds that attention; drop its class token and its
        # (B, h·w, D) tokens reshape to a (B, D, h, w) map (grad-cam's advice for ViT: blocks[-1].norm1).
        self.cam_layer = f"blocks.{depth - 1}.norm1"
        self.feature_layout = "NLC"
        self.apply(self._init_weights)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        from timm.layers import trunc_normal_

        if isinstance(module, nn.Linear):  # timm's ViT init; convs and norms keep torch's
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        if not self.dynamic_img_size:
            raise ValueError(
                f"cnn_t was built for a {self.grid_size[0]}x{self.grid_size[1]} token grid but the input gives "
                f"{grid[0]}x{grid[1]}: build it with the input's img_size, or dynamic_img_size=True"
            )
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(self.pos_embed, list(grid), list(self.grid_size), self.num_prefix_tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))  # (B, D, h, w)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h·w, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + h·w, D)
        x = self.pos_drop(x + self._pos_embed((h, w)))
        return self.norm(self.blocks(x))

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


@MODELS.register("cnn_t")
def cnn_t(num_outputs: int, in_chans: int = 3, img_size: tuple[int, int] = (32, 32), **kwargs) -> CNNT:
    """CNN-T: convs (32, 64, 128) with pooling, 6 ViT blocks of width 256; ~4.9M parameters at 32 px."""
    return CNNT(num_outputs, in_chans=in_chans, img_size=tuple(img_size), **kwargs)
