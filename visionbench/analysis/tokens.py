"""Token models' activations back into maps, from what the model declares (../STYLE.md §5): `feature_layout`
"NLC" means (B, prefix + h·w, D) tokens; `num_prefix_tokens` (class/register tokens) come first and `grid_size`
(ours) or `patch_embed.grid_size` (timm's) gives (h, w). This is the `reshape_transform` that pytorch-grad-cam asks
its users to write by hand for ViTs (pytorch-grad-cam #257, #511).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from visionbench.models import token_grid


def reshape_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """None for "NCHW" models; for "NLC" ones, tokens (B, P + h·w, D) -> maps (B, D, h, w), prefix dropped."""
    if getattr(model, "feature_layout", "NCHW") != "NLC":
        return None
    prefix, (h, w) = token_grid(model)

    def to_map(x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        if N - prefix != h * w:
            raise ValueError(f"{N} tokens do not make {prefix} prefix tokens and a {h}x{w} grid")
        return x[:, prefix:].transpose(1, 2).reshape(B, D, h, w)  # (B, D, h, w)

    return to_map
