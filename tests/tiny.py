"""Tiny randomly initialised diffusers UNets and analytic denoisers for the tests."""
from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.schedule import VPSchedule


def tiny_unet(seed: int = 0, channels: int = 3, size: int = 8) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       attention_head_dim=4).eval()


def tiny_cond_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2).eval()


def tiny_denoiser(seed: int = 0, **kwargs) -> DiffusersDenoiser:
    return DiffusersDenoiser(tiny_unet(seed), VPSchedule.linear(), **kwargs)


class ConstantEps:
    """eps(x, t) = c: an x-independent noise prediction."""

    def __init__(self, c: torch.Tensor):
        self.c = c

    def __call__(self, x, sigma, **extra):
        return x - sigma.view(-1, *[1] * (x.ndim - 1)) * self.c


class GaussianOracle:
    """The exact denoiser for data ~ N(mu, s^2 I): E[x0 | x] with x = x0 + sigma * eps."""

    def __init__(self, mu: float = 0.0, std: float = 1.0):
        self.mu, self.std = mu, std

    def __call__(self, x, sigma, **extra):
        sigma = sigma.view(-1, *[1] * (x.ndim - 1))
        return self.mu + self.std ** 2 / (self.std ** 2 + sigma ** 2) * (x - self.mu)


def tiny_dit(seed: int = 0, channels: int = 1, size: int = 8, num_layers: int = 2) -> DiTTransformer2DModel:
    """A class-conditional DiT (classes 0..9, null class 10), 2x2 patches."""
    torch.manual_seed(seed)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=channels,
                                 out_channels=channels, num_layers=num_layers, sample_size=size, patch_size=2,
                                 num_embeds_ada_norm=10, norm_num_groups=1).eval()
