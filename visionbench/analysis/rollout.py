"""Attention rollout (Abnar & Zuidema, 2020, https://arxiv.org/abs/2005.00928) for ViT-style models.

Each layer's attention, averaged over heads, plus the identity for the residual path and renormalised per row, is
multiplied through the layers; the class token's row (or, without a prefix token, the mean row) over the patch
tokens is the map. The attention probabilities are caught where timm's `Attention` computes them explicitly: its
fused kernel is switched off for the call (and always switched back), and a forward hook on `attn_drop`, whose
input is the softmaxed attention (B, heads, N, N), records it. Hooks are removed in a `finally`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionbench.analysis.tokens import token_grid


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm-style attention modules (a `fused_attn` switch and an `attn_drop` on the probabilities), in order."""
    return [
        m for m in model.modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


@torch.no_grad()
def rollout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) rollout maps in [0, 1], upsampled to the images' size."""
    modules = attention_modules(model)
    attentions: list[torch.Tensor] = []
    fused = [m.fused_attn for m in modules]
    handles = []
    try:
        for m in modules:
            m.fused_attn = False
            handles.append(m.attn_drop.register_forward_hook(lambda mod, args, out: attentions.append(args[0].float())))
        model(images)
    finally:
        for h in handles:
            h.remove()
        for m, f in zip(modules, fused, strict=True):
            m.fused_attn = f
    prefix, (h, w) = token_grid(model)
    B, _, N, _ = attentions[0].shape
    eye = torch.eye(N, device=images.device)
    result = eye.expand(B, N, N)
    for attn in attentions:
        a = attn.mean(1) + eye  # (B, N, N): heads averaged, plus the residual connection
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    rows = result[:, 0, prefix:] if prefix else result[:, :, :].mean(1)  # (B, h·w)
    maps = rows.reshape(B, 1, h, w)
    maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = maps.flatten(1).amin(1)[:, None, None]
    high = maps.flatten(1).amax(1)[:, None, None]
    return (maps - low) / (high - low).clamp(min=1e-12)
