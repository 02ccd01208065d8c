"""Batched augmentation of uint8 image batches on their own device: one gather per batch, no per-image Python.

Each function takes a batch (B, C, H, W) and per-image parameters drawn beforehand, so the same parameters give
the same result however the epoch is cut into batches (which makes mid-epoch resume exact).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def translate(
    images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int, pad_mode: str = "reflect"
) -> torch.Tensor:
    """Shift each image by (dx, dy) pixels in [-pad, pad]: a random crop of the image padded by `pad` pixels,
    with reflected borders (`pad_mode` "reflect") or zeros ("zeros", torchvision's RandomCrop(padding=p))."""
    B, C, H, W = images.shape
    mode = "constant" if pad_mode == "zeros" else "reflect"
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode=mode).to(images.dtype)  # (B, C, H+2p, W+2p)
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


def resize(images: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) resized to `size` (h, w): torch's antialiased interpolation, what torchvision's Resize does to
    tensors (bicubic with Pillow's a = -0.5 kernel, so it matches timm's Pillow transforms within a grey level).
    Computed in float32 whatever the device, so a CPU and a GPU give the same images; uint8 stays uint8 (rounded)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = F.interpolate(images.float(), size=tuple(size), mode=interpolation, align_corners=False, antialias=True)
    return _like(x, images)


def eval_resize(images: torch.Tensor, size: int, interpolation: str, crop_pct: float | None) -> torch.Tensor:
    """The evaluation view of a batch: with `crop_pct`, timm's eval transform (shorter side resized to
    floor(size / crop_pct), as torchvision's Resize(int) does, then the centre size x size square, as CenterCrop
    places it); without, resized to size x size."""
    H, W = images.shape[-2:]
    if crop_pct is None:
        return resize(images, (size, size), interpolation)
    short = math.floor(size / crop_pct)
    x = resize(images, (short, int(short * W / H)) if H <= W else (int(short * H / W), short), interpolation)
    top, left = int(round((x.shape[-2] - size) / 2.0)), int(round((x.shape[-1] - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def resized_crop(
    images: torch.Tensor, boxes: dict[str, torch.Tensor], size: tuple[int, int], interpolation: str = "bilinear"
) -> torch.Tensor:
    """Each image's box (`boxes["top"]`, `["left"]`, `["height"]`, `["width"]`, (B,) pixels) cut out and resized to
    `size`: torchvision's resized_crop (antialiased) for a whole batch at once.

    No library function resamples a different box per image with antialiasing (roi_align averages bins and
    grid_sample neither antialiases nor uses Pillow's bicubic), so the resampling is written out: per image, one
    weight matrix per axis holding torch's antialiased filter (the weights of `resize`), restricted to the box and
    normalised there as cropping first would; the batch is then two batched matrix products, (B, h_out, H) x
    (B, C, H, W) x (B, W, w_out).
    """
    kernel = _bicubic if interpolation == "bicubic" else _triangle
    H, W = images.shape[-2:]
    rows = _resample_weights(boxes["top"], boxes["height"], H, size[0], kernel)  # (B, h_out, H)
    cols = _resample_weights(boxes["left"], boxes["width"], W, size[1], kernel)  # (B, w_out, W)
    x = torch.einsum("boh,bchw->bcow", rows, images.float())  # (B, C, h_out, W)
    return _like(torch.einsum("bcow,bpw->bcop", x, cols), images)  # (B, C, h_out, w_out)


def _resample_weights(start, length, n_in: int, n_out: int, kernel) -> torch.Tensor:
    """(B, n_out, n_in) weights of torch's antialiased 1-D resampling of `length` input pixels from `start` to
    n_out: output pixel i is centred at scale * (i + 0.5) in the box, and the kernel is stretched by the scale when
    shrinking (scale = length / n_out > 1)."""
    device = start.device
    scale = length.double() / n_out  # (B,)
    stretch = scale.clamp(min=1.0)
    centre = scale[:, None] * (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5)  # (B, n_out)
    j = torch.arange(n_in, device=device, dtype=torch.float64)[None, :] - start[:, None].double()  # (B, n_in)
    arg = (j[:, None, :] + 0.5 - centre[:, :, None]) / stretch[:, None, None]  # (B, n_out, n_in)
    inside = (j >= 0) & (j < length[:, None].double())  # (B, n_in)
    weights = kernel(arg).masked_fill(~inside[:, None, :], 0.0)
    return (weights / weights.sum(-1, keepdim=True)).float()


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_(min=0)


def _bicubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with Pillow's a = -0.5 (torch's antialiased bicubic), zero beyond 2."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _like(x: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Float results in the dtype of `images`: uint8 rounded and clamped to 0-255."""
    if images.dtype == torch.uint8:
        return x.round_().clamp_(0, 255).to(torch.uint8)
    return x.to(images.dtype)
