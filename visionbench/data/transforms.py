"""Batched augmentation of uint8 image batches on their own device: one gather per batch, no per-image Python.

Each function takes a batch (B, C, H, W) and per-image parameters drawn beforehand, so the same parameters give
the same result however the epoch is cut into batches (which makes mid-epoch resume exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def translate(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by (dx, dy) pixels in [-pad, pad], filling with reflected borders: a random crop
    of the reflect-padded image."""
    B, C, H, W = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype)  # (B, C, H+2p, W+2p)
    rows = (torch.arange(H, device=images.device) + pad + dy[:, None]).long()  # (B, H)
    cols = (torch.arange(W, device=images.device) + pad + dx[:, None]).long()  # (B, W)
    b = torch.arange(B, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the images where `mask` (B,) is true."""
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def cutout(images: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size×size square centred at (cy, cx) in each image (clipped at the borders)."""
    B, C, H, W = images.shape
    r = torch.arange(H, device=images.device)[None, :]
    c = torch.arange(W, device=images.device)[None, :]
    half = size // 2
    in_rows = (r >= (cy[:, None] - half)) & (r < (cy[:, None] - half + size))  # (B, H)
    in_cols = (c >= (cx[:, None] - half)) & (c < (cx[:, None] - half + size))  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    return images.masked_fill(mask[:, None], 0)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 standardised with per-channel mean/std given in [0, 1] units."""
    return (images.float().div_(255) - mean[:, None, None]).div_(std[:, None, None])
