"""Attention rollout (Abnar & Zuidema, 2020, https://arxiv.org/abs/2005.00928) for ViT-style models.

Each layer's attention, averaged over heads, plus the identity for the residual path and renormalised per row, is
multiplied through the layers; the class token's row (or, without a prefix token, the mean row) over the patch
tokens is the map. The attention probabilities are caught where timm's `Attention` computes them explicitly: its
fused kernel is switched off for the call (and always switched back), and a forward hook on `attn_drop`, whose
input is the softmaxed attention (B, heads, N, N), records it. Hooks are removed in a `finally`. The maps do not
depend on the target: rollout follows the class token, not one output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionbench.analysis.attribution._base import Attribution
from visionbench.models import token_grid
from visionbench.registry import ATTRIBUTIONS


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm-style attention modules (a `fused_attn` switch and an `attn_drop` on the probabilities), in order."""
    return [
        m for m in model.modules() if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module)
    ]


def _keys_to_queries(module: nn.Module, grid: tuple[int, int], prefix: int, n_kv: int) -> torch.Tensor:
    """(N_kv, N) matrix spreading each subsampled key token (CvT's stride-s k/v convolutions) evenly over the query
    positions it covers, so that a rectangular attention becomes a square, still row-stochastic one."""
    H, W = grid
    s = module.kv_stride
    hk, wk = -(-H // s), -(-W // s)  # odd kernel, padding k // 2: the conv's output side
    if prefix + hk * wk != n_kv:
        raise ValueError(f"{n_kv} key tokens do not make a {hk}x{wk} grid with {prefix} prefix tokens")
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    owner = ((ys // s) * wk + xs // s).flatten()  # key token of each query position
    spread = torch.zeros(n_kv, prefix + H * W)
    spread[torch.arange(prefix), torch.arange(prefix)] = 1.0
    spread[prefix + owner, prefix + torch.arange(H * W)] = 1.0
    return spread / spread.sum(1, keepdim=True).clamp(min=1)


@torch.no_grad()
def rollout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) rollout maps in [0, 1], upsampled to the images' size. Models whose token count changes between
    stages (CvT) are rolled out over the blocks of the last stage, those with the final token count."""
    modules = attention_modules(model)
    records: list[tuple[nn.Module, torch.Tensor, tuple[int, int] | None]] = []
    grids: dict[nn.Module, tuple[int, int] | None] = {}
    fused = [m.fused_attn for m in modules]
    handles = []

    def catch_grid(mod, args):  # CvT's attention takes (x, grid); timm's takes x alone
        grids[mod] = tuple(args[1]) if len(args) > 1 else None

    def catch_attn(mod):
        return lambda drop, args, out: records.append((mod, args[0].float(), grids.get(mod)))

    try:
        for m in modules:
            m.fused_attn = False
            handles.append(m.register_forward_pre_hook(catch_grid))
            handles.append(m.attn_drop.register_forward_hook(catch_attn(m)))
        model(images)
    finally:
        for h in handles:
            h.remove()
        for m, f in zip(modules, fused, strict=True):
            m.fused_attn = f
    prefix, (h, w) = token_grid(model)
    N = prefix + h * w
    B = images.shape[0]
    eye = torch.eye(N, device=images.device)
    result = eye.expand(B, N, N)
    for mod, attn, grid in records:
        if attn.shape[-2] != N:  # an earlier stage with another token grid
            result = eye.expand(B, N, N)
            continue
        a = attn.mean(1)  # (B, N, N_kv): heads averaged
        if a.shape[-1] != N:
            a = a @ _keys_to_queries(mod, grid, getattr(mod, "num_prefix_tokens", prefix), a.shape[-1]).to(a)
        a = a + eye  # the residual connection
        a = a / a.sum(-1, keepdim=True)
        result = a @ result
    rows = result[:, 0, prefix:] if prefix else result.mean(1)  # (B, h·w)
    maps = rows.reshape(B, 1, h, w)
    maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = maps.flatten(1).amin(1)[:, None, None]
    high = maps.flatten(1).amax(1)[:, None, None]
    return (maps - low) / (high - low).clamp(min=1e-12)


@ATTRIBUTIONS.register("attention_rollout")
class AttentionRollout(Attribution):
    refusal = "has no attention layers (ViT, CvT and the hybrids have); use gradcam or a gradient method"

    @staticmethod
    def applies_to(model: nn.Module) -> bool:
        return bool(attention_modules(model))

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return rollout(self.model, images)
