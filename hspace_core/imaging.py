"""Tensors in [-1, 1] to pictures: labelled grids for sweeps and reports."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .direction import check_finite
from .errors import HSpaceError


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8 (grey images become RGB)."""
    images = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.permute(0, 2, 3, 1).contiguous()


def image_grid(images: torch.Tensor, ncols: int, upscale: int = 1, row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None, pad: int = 2) -> Image.Image:
    """A grid of images (row-major), nearest-neighbour upscaled, with optional row and column labels."""
    pixels = to_uint8(images)
    n, h, w, _ = pixels.shape
    h, w = h * upscale, w * upscale
    nrows = (n + ncols - 1) // ncols
    left = 8 + 7 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = 16 if col_labels else 0
    grid = Image.new("RGB", (left + ncols * (w + pad) + pad, top + nrows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, ncols)
        tile = Image.fromarray(pixels[i].numpy()).resize((w, h), Image.NEAREST)
        grid.paste(tile, (left + pad + c * (w + pad), top + pad + r * (h + pad)))
    for c, label in enumerate(col_labels or []):
        draw.text((left + pad + c * (w + pad), 2), str(label), fill="black")
    for r, label in enumerate(row_labels or []):
        draw.text((2, top + pad + r * (h + pad) + h // 2 - 5), str(label), fill="black")
    return grid


def mask_to_grid(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A mask ``[H, W]`` or ``[1, H, W]`` (ComfyUI's MASK, image pixels, values in [0, 1]) resized to the
    model's ``height × width`` grid (area averaging when it shrinks), as ``[1, height, width]``: broadcastable
    over the channels of ε for Haas's masked Jacobian."""
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise HSpaceError(f"one mask [H, W] (or a batch of one [1, H, W]) expected, got shape {list(mask.shape)}")
    check_finite(mask, "the mask")
    resized = F.interpolate(mask.detach().float()[None, None], size=(height, width), mode="area")
    return resized[0]
