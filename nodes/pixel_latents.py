"""Pixel-space latents (a pixel DDPM's x0, channels first, in [-1, 1]) to and from ComfyUI IMAGEs, without a VAE."""
from __future__ import annotations

import torch

from ..hspace_core.checks import check_batch
from ..hspace_core.errors import HSpaceError


def latent_to_image(samples: torch.Tensor) -> torch.Tensor:
    """Pixel latents [B, C, H, W] in [-1, 1] -> a ComfyUI IMAGE [B, H, W, 3] in [0, 1] (1 channel -> grey)."""
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise HSpaceError(f"pixel latents [B, 1 or 3, H, W] expected, got shape {list(samples.shape)}")
    images = ((samples.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.movedim(1, -1).contiguous()


def image_to_latent(images: torch.Tensor, channels: int) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] in [0, 1] -> pixel latents [B, channels, H, W] in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] < 1:
        raise HSpaceError(f"an IMAGE [B, H, W, C] expected, got shape {list(images.shape)}")
    pixels = check_batch(images.float().movedim(-1, 1), "the IMAGE", value_range=(0.0, 1.0))[:, :3]
    if channels == 1:
        pixels = pixels.mean(dim=1, keepdim=True)
    elif pixels.shape[1] == 1:
        pixels = pixels.repeat(1, channels, 1, 1)
    if pixels.shape[1] != channels:
        raise HSpaceError(f"an image with {channels} channels (or grey) expected, got {pixels.shape[1]}")
    return pixels * 2.0 - 1.0
