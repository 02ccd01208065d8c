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


def vflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Turn the images upside down where `mask` (B,) is true."""
    return torch.where(mask[:, None, None, None], images.flip(-2), images)


def rot90(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each (square) image by k[i] * 90 degrees counter-clockwise: three masked passes, no per-image loop."""
    out = images
    for turns in (1, 2, 3):
        out = torch.where((k == turns)[:, None, None, None], images.rot90(turns, (-2, -1)), out)
    return out


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by `degrees[i]` about its centre (bilinear, zero fill outside), one grid_sample call."""
    theta = torch.deg2rad(degrees.float())
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros_like(cos)
    affine = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(affine, list(images.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(images.dtype)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> float32 standardised with per-channel mean/std given in [0, 1] units. uint8 images are grey
    levels (divided by 255 first); float images are taken to be in [0, 1] units already."""
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    return (x - mean[:, None, None]).div_(std[:, None, None])


ERASE_AREA = (0.02, 1 / 3)  # fraction of the image erased (timm's RandomErasing defaults)
ERASE_LOG_ASPECT = (-1.2039728043259361, 1.1939224684724346)  # log(0.3), log(1 / 0.3)


def random_erasing(x: torch.Tensor, p: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """timm-style random erasing of a normalised float batch (B, C, H, W), batched: where `p["erase"]`, a rectangle
    of area fraction `p["erase_area"]` and log aspect `p["erase_aspect"]` (clipped to the image), placed by the
    fractions `p["erase_y"]`, `p["erase_x"]`, is replaced by per-pixel standard normal noise from `generator`."""
    B, C, H, W = x.shape
    area = p["erase_area"] * H * W
    aspect = p["erase_aspect"].exp()
    h = (area * aspect).sqrt().round().clamp(1, H).long()  # (B,)
    w = (area / aspect).sqrt().round().clamp(1, W).long()
    top = (p["erase_y"] * (H - h + 1)).long()
    left = (p["erase_x"] * (W - w + 1)).long()
    r = torch.arange(H, device=x.device)[None, :]
    c = torch.arange(W, device=x.device)[None, :]
    rows = (r >= top[:, None]) & (r < (top + h)[:, None])  # (B, H)
    cols = (c >= left[:, None]) & (c < (left + w)[:, None])  # (B, W)
    mask = (rows[:, :, None] & cols[:, None, :] & p["erase"][:, None, None])[:, None]  # (B, 1, H, W)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(mask, noise, x)
