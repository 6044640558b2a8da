"""Autograd-capable denoisers over a ComfyUI MODEL, for the Jacobian-based discovery of hspace_core.

hspace_core's Jacobian code needs ``encode(x, sigma) -> h`` (the encoder up to the middle block) and
``decode_from(x, sigma, h) -> eps`` (the UNet with its middle-block output replaced), both differentiable;
Park's x-space guidance needs ``eps(x, sigma)``.

- Pixel DDPMs (the pack's loader) hold a diffusers UNet: hspace_core's ``DiffusersDenoiser`` runs on it; the
  pack's DiT holds a diffusers DiT: hspace_core's ``DiffusersTransformerDenoiser`` (``decode_from`` gives the velocity).
- Other ComfyUI UNets go through :class:`ComfyUNetDenoiser`: an autograd-capable copy of the MODEL, patched
  with hspace_core's ``BottleneckOverride`` (the stop/replace that ``DiffusersDenoiser`` uses), called through
  ``apply_model`` unguided with one prompt (SD1.x / SD2.x: cross-attention conditioning only). Flux and SD3 go
  the same way, hooked at a block or its attention (``hook_site``) and given the prompt's pooled output too, their
  LayerNorms given copies of their inputs (Flux adds residuals in place); their "eps" is the velocity
  ``(x - x0_hat) / sigma`` of the flow form, so the Jacobian is d v / d h, as in the library. ComfyUI's
  ``in_training`` flag is set during the products (``comfy_adapter.autograd_enabled``).
"""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.denoisers import BottleneckOverride, DiffusersDenoiser
from ..hspace_core.errors import HSpaceError

from . import _comfy, comfy_adapter, pixel_model


class ComfyUNetDenoiser:
    """``encode`` / ``decode_from`` on a ComfyUI UNet MODEL, unguided, with one cross-attention conditioning."""

    def __init__(self, model: Any, positive: list | None, hook_site: str | None = None):
        base = comfy_adapter.base_model(model)
        transformer = comfy_adapter.family(model) != "unet"
        if getattr(base, "adm_channels", 0) and not transformer:
            raise HSpaceError(f"{type(base).__name__} needs pooled/size conditioning (SDXL-like); Jacobian "
                              "directions support SD1.x/SD2.x checkpoints, Flux, SD3 and pixel DDPMs")
        if not positive:
            raise HSpaceError("a positive CONDITIONING is needed for the Jacobian of a text-conditioned model")
        self.context = positive[0][0]
        self.extra: dict[str, torch.Tensor] = {}
        if transformer:
            pooled = positive[0][1].get("pooled_output")
            if pooled is None:
                raise HSpaceError(f"{type(base).__name__} needs the prompt's pooled output: a CONDITIONING from its "
                                  "text encoder (CLIPTextEncode) expected, this one has no pooled_output")
            self.extra["y"] = pooled
            if getattr(getattr(comfy_adapter.diffusion_model(model), "params", None), "guidance_embed", False):
                self.extra["guidance"] = torch.tensor([float(positive[0][1].get("guidance", 3.5))])
        self.override = BottleneckOverride()
        differentiable = comfy_adapter.differentiable_attention(comfy_adapter.autograd_copy(model))
        if transformer:
            differentiable = comfy_adapter.out_of_place_norm_inputs(differentiable)
        self.patcher = comfy_adapter.patch_model(differentiable, self.override, hook_site=hook_site)
        _comfy.require("comfy.model_management").load_models_gpu([self.patcher])

    def _call(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        base = self.patcher.model
        sigmas = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
        options = {**self.patcher.model_options.get("transformer_options", {}), "sigmas": sigmas,
                   "cond_or_uncond": [0]}
        context = self.context.to(x.device).expand(x.shape[0], *self.context.shape[1:])
        extra = {name: value.to(x.device).expand(x.shape[0], *value.shape[1:]) for name, value in self.extra.items()}
        denoised = base.apply_model(x, sigmas, c_crossattn=context, transformer_options=options, **extra)
        return (x - denoised) / float(sigma)

    def eps(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self._call(x, sigma)

    def encode(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.override.encode(lambda: self._call(x, sigma))

    def decode_from(self, x: torch.Tensor, sigma: float, h: torch.Tensor) -> torch.Tensor:
        with self.override.replacing(h):
            return self._call(x, sigma)


def _load_on_sampling_device(model: Any) -> None:
    """A pixel model onto the device ComfyUI samples on (it waits on the offload device)."""
    management = _comfy.optional("comfy.model_management")
    if management is not None:
        management.load_models_gpu([model])


def autograd_denoiser(model: Any, positive: list | None = None, hook_site: str | None = None) -> Any:
    """The denoiser the Jacobian code needs, for a pixel DDPM, a ComfyUI UNet MODEL or a Flux / SD3 transformer
    (hooked at ``hook_site``; None = the model's default)."""
    kind = comfy_adapter.family(model)
    if isinstance(comfy_adapter.diffusion_model(model), pixel_model.DiffusersDiTWrapper):
        _load_on_sampling_device(model)
        return comfy_adapter.diffusion_model(model).denoiser(comfy_adapter.resolve_site(model, hook_site))
    if kind != "unet":
        return ComfyUNetDenoiser(model, positive, hook_site)
    inner = comfy_adapter.check_unet(model)
    if isinstance(inner, pixel_model.DiffusersUNetWrapper):
        _load_on_sampling_device(model)
        return DiffusersDenoiser(inner.unet, comfy_adapter.vp_schedule(model), comfy_adapter.prediction_type(model))
    return ComfyUNetDenoiser(model, positive)
