"""Autograd-capable denoisers over a ComfyUI MODEL, for the Jacobian-based discovery of hspace_core.

hspace_core's Jacobian code needs ``encode(x, sigma) -> h`` (the encoder up to the middle block) and
``decode_from(x, sigma, h) -> eps`` (the UNet with its middle-block output replaced), both differentiable;
Park's x-space guidance needs ``eps(x, sigma)``.

- Pixel DDPMs (the pack's loader) hold a diffusers UNet: hspace_core's ``DiffusersDenoiser`` runs on it.
- Other ComfyUI UNets go through :class:`ComfyUNetDenoiser`: an autograd-capable copy of the MODEL, patched
  with hspace_core's ``BottleneckOverride`` (the stop/replace that ``DiffusersDenoiser`` uses), called through
  ``apply_model`` unguided with one prompt (SD1.x / SD2.x: cross-attention conditioning only).
"""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.denoisers import BottleneckOverride, DiffusersDenoiser
from ..hspace_core.errors import HSpaceError

from . import _comfy, comfy_adapter, pixel_model


class ComfyUNetDenoiser:
    """``encode`` / ``decode_from`` on a ComfyUI UNet MODEL, unguided, with one cross-attention conditioning."""

    def __init__(self, model: Any, positive: list | None):
        base = comfy_adapter.base_model(model)
        if getattr(base, "adm_channels", 0):
            raise HSpaceError(f"{type(base).__name__} needs pooled/size conditioning (SDXL-like); Jacobian "
                              "directions support SD1.x/SD2.x checkpoints and pixel DDPMs")
        if not positive:
            raise HSpaceError("a positive CONDITIONING is needed for the Jacobian of a text-conditioned model")
        self.context = positive[0][0]
        self.override = BottleneckOverride()
        differentiable = comfy_adapter.differentiable_attention(comfy_adapter.autograd_copy(model))
        self.patcher = comfy_adapter.patch_model(differentiable, self.override)
        _comfy.require("comfy.model_management").load_models_gpu([self.patcher])

    def _call(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        base = self.patcher.model
        sigmas = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        options = {**self.patcher.model_options.get("transformer_options", {}), "sigmas": sigmas,
                   "cond_or_uncond": [0]}
        context = self.context.to(x.device).expand(x.shape[0], *self.context.shape[1:])
        denoised = base.apply_model(x, sigmas, c_crossattn=context, transformer_options=options)
        return (x - denoised) / float(sigma)

    def eps(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self._call(x, sigma)

    def encode(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.override.encode(lambda: self._call(x, sigma))

    def decode_from(self, x: torch.Tensor, sigma: float, h: torch.Tensor) -> torch.Tensor:
        with self.override.replacing(h):
            return self._call(x, sigma)


def autograd_denoiser(model: Any, positive: list | None = None) -> Any:
    """The denoiser the Jacobian code needs, for a pixel DDPM or a ComfyUI UNet MODEL."""
    inner = comfy_adapter.check_unet(model)
    if isinstance(inner, pixel_model.DiffusersUNetWrapper):
        management = _comfy.optional("comfy.model_management")
        if management is not None:  # onto the device ComfyUI samples on (the UNet waits on the offload device)
            management.load_models_gpu([model])
        return DiffusersDenoiser(inner.unet, comfy_adapter.vp_schedule(model), comfy_adapter.prediction_type(model))
    return ComfyUNetDenoiser(model, positive)
