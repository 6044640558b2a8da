"""Asyrp's implicit function f_t (Kwon et al. 2023, ALGORITHMS.md §1.4): the block on h and the frozen UNet's time
embedding it reads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HSpaceError


class DeltaBlock(nn.Module):
    """Asyrp's f_t for DDPM-style UNets: Δh_t = f(h_t, temb_t), with the shape of h.

    1×1 conv -> + Linear(SiLU(temb)) broadcast over space -> GroupNorm(groups, eps 1e-6) -> SiLU -> 1×1 conv.
    Default PyTorch initialisation (not zero), as in the official code. 3C² + 5C parameters when the
    time embedding has C channels: 788,992 for C = 512.
    """

    def __init__(self, channels: int, temb_channels: int, num_groups: int = 32, eps: float = 1e-6):
        super().__init__()
        if channels % num_groups:
            raise HSpaceError(f"GroupNorm needs channels divisible by num_groups: {channels} channels, "
                              f"{num_groups} groups")
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.temb_proj = nn.Linear(temb_channels, channels)
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps)
        self.conv_out = nn.Conv2d(channels, channels, kernel_size=1)

    @classmethod
    def for_unet(cls, unet: nn.Module, num_groups: int | None = None) -> "DeltaBlock":
        """A block sized for a diffusers UNet: h channels = last block_out_channels, temb = its embedding width,
        on the UNet's device and in its dtype.

        ``num_groups`` defaults to 32 when it divides the channels, else the UNet's ``norm_num_groups``.
        """
        channels = int(unet.config.block_out_channels[-1])
        temb_channels = int(unet.time_embedding.linear_2.out_features)
        if num_groups is None:
            num_groups = 32 if channels % 32 == 0 else int(unet.config.norm_num_groups)
        parameter = next(unet.parameters())
        return cls(channels, temb_channels, num_groups).to(parameter.device, parameter.dtype)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if h.ndim != 4 or h.shape[1] != self.conv_in.in_channels:
            raise HSpaceError(f"h of shape [B, {self.conv_in.in_channels}, H, W] expected, got {tuple(h.shape)}")
        hidden = self.conv_in(h) + self.temb_proj(F.silu(temb))[:, :, None, None]
        return self.conv_out(F.silu(self.norm(hidden)))


def unet_time_embedding(unet: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The frozen UNet's own time embedding ``unet.time_embedding(unet.time_proj(t))`` (diffusers UNets with
    a positional ``time_proj``), ``[B, temb]``, without gradient."""
    if not hasattr(unet, "time_proj") or not hasattr(unet, "time_embedding"):
        raise HSpaceError(f"a diffusers UNet with time_proj and time_embedding expected, got {type(unet).__name__}")
    parameter = next(unet.parameters())
    t = torch.as_tensor(timesteps, dtype=torch.float32, device=parameter.device).flatten()
    with torch.no_grad():
        return unet.time_embedding(unet.time_proj(t).to(parameter.dtype))


