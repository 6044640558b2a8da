"""diffusers flow-matching transformers (Flux, SD3, DiT) as k-diffusion denoisers, with the controller hooked on
a chosen block (:mod:`~hspace_core.sites`).

The denoiser works in the rectified-flow form ``x = (1 - sigma) x0 + sigma eps`` (``form = FLOW``: every sampler
in :mod:`~hspace_core.samplers` reads it), x is the latent ``[B, C, H, W]`` and the network predicts the velocity
``v = eps - x0``, so ``x0_hat = x - sigma v``. What each block returns, in diffusers 0.42:

- ``FluxTransformerBlock`` and ``FluxSingleTransformerBlock``: ``(encoder_hidden_states, hidden_states)``, text then
  image tokens (the single block concatenates text + image inside and splits them again before returning);
  their attention: ``(image, text)`` in a joint block, one ``[text + image]`` tensor in a single block.
- SD3's ``JointTransformerBlock``: ``(encoder_hidden_states, hidden_states)`` (the text part None in the last block);
  its attention ``(image, text)``.
- DiT's ``BasicTransformerBlock``: the image tokens; its self-attention (``attn1``) likewise.

So at a block output the image tokens are the second element of a tuple, at an attention output the first, and
in a single tensor the last ``N_image`` tokens: only they reach the controller, as ``[rows, N_image, dim]``.
"""
from __future__ import annotations

from typing import Any

import torch

from .bottleneck import COND, UNCOND, Bottleneck
from .denoisers import BottleneckOverride, GuidedDenoiser, hspace_flags
from .direction import check_finite, model_fingerprint
from .errors import HSpaceError
from .schedule import FLOW, FlowSchedule
from .sites import HookSite

FAMILIES = {"FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3", "DiTTransformer2DModel": "dit"}
REQUIRED_INPUTS = {"flux": ("encoder_hidden_states", "pooled_projections"),
                   "sd3": ("encoder_hidden_states", "pooled_projections"), "dit": ("class_labels",)}


def pack_2x2(x: torch.Tensor) -> torch.Tensor:
    """Flux's token layout: ``[B, C, H, W]`` -> ``[B, (H/2)(W/2), 4C]``, 2x2 patches in row-major order."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    b, _, packed = tokens.shape
    c = packed // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


class DiffusersTransformerDenoiser(GuidedDenoiser):
    """``denoiser(x, sigma, **extra) -> x0_hat`` for a diffusers ``FluxTransformer2DModel``,
    ``SD3Transformer2DModel`` or ``DiTTransformer2DModel`` trained for rectified flow (velocity prediction).

    Args:
        model: the transformer (eval mode).
        site: the hook site (a :class:`~hspace_core.sites.HookSite` or its name, e.g.
            ``"transformer_blocks.1.output"``, ``"single_transformer_blocks.0.attn.output"``); by default the
            output of the middle block of ``transformer_blocks``.
        cond: the model inputs of one conditioned row, e.g. ``{"encoder_hidden_states": [1, L, D],
            "pooled_projections": [1, P]}`` (Flux, SD3; Flux with ``guidance_embeds`` also ``"guidance"``) or
            ``{"class_labels": tensor([c])}`` (DiT); a tensor with one row is repeated for every row of x.
        uncond, cfg_scale: classifier-free guidance, rows batched ``[uncond; cond]`` (``cond_or_uncond = [1, 0]``).
        schedule: sigmas <-> model timesteps (:class:`~hspace_core.schedule.FlowSchedule`).
        latent_size: (H, W) of x; by default the model config's ``sample_size`` (Flux has none: required).
    """

    form = FLOW

    def __init__(self, model: torch.nn.Module, site: HookSite | str | None = None,
                 cond: dict[str, torch.Tensor] | None = None, uncond: dict[str, torch.Tensor] | None = None,
                 cfg_scale: float = 1.0, schedule: FlowSchedule | None = None,
                 latent_size: tuple[int, int] | None = None):
        arch = type(model).__name__
        if arch not in FAMILIES:
            raise HSpaceError(f"a diffusers {', '.join(FAMILIES)} expected, got {arch}")
        self.family = FAMILIES[arch]
        cond = dict(cond or {})
        if self.family == "flux" and getattr(model.config, "guidance_embeds", False):
            required = REQUIRED_INPUTS["flux"] + ("guidance",)
        else:
            required = REQUIRED_INPUTS[self.family]
        missing = [name for name in required if name not in cond]
        if missing:
            raise HSpaceError(f"{arch} needs the inputs {list(required)} in cond; missing {missing}")
        if cfg_scale != 1.0 and (uncond is None or set(uncond) != set(cond)):
            raise HSpaceError(f"classifier-free guidance (cfg_scale != 1) needs uncond with the keys {sorted(cond)}")
        self.model, self.arch = model, arch
        self.cond, self.uncond, self.cfg_scale = cond, uncond, cfg_scale
        self.schedule = schedule or FlowSchedule()
        self.site = self._site(site)
        self.hooked = self._hooked_module()
        size = latent_size or getattr(model.config, "sample_size", None)
        if size is None:
            raise HSpaceError(f"{arch} has no sample_size in its config: give latent_size=(H, W)")
        self.latent_size = (size, size) if isinstance(size, int) else tuple(size)
        self.controller: Bottleneck | None = None
        self.override = BottleneckOverride()
        self._call: dict[str, Any] = {}

    def _site(self, site: HookSite | str | None) -> HookSite:
        if site is None:
            return HookSite("block", "transformer_blocks", len(self.model.transformer_blocks) // 2)
        site = HookSite.parse(site)
        if site.kind == "mid_block":
            raise HSpaceError(f"{self.arch} has no middle block: a transformer site '<blocks>.<i>.output' or "
                              "'<blocks>.<i>.attn.output' expected")
        blocks = getattr(self.model, site.blocks, None)
        if not isinstance(blocks, torch.nn.ModuleList) or not len(blocks):
            names = [name for name, child in self.model.named_children() if isinstance(child, torch.nn.ModuleList)]
            raise HSpaceError(f"{self.arch} has no block list {site.blocks!r}; it has {names}")
        if site.index >= len(blocks):
            raise HSpaceError(f"{site.blocks} of {self.arch} has {len(blocks)} blocks: index {site.index} is out of "
                              "range")
        return site

    def _hooked_module(self) -> torch.nn.Module:
        block = getattr(self.model, self.site.blocks)[self.site.index]
        if self.site.kind == "block":
            return block
        attention = getattr(block, "attn", None) or getattr(block, "attn1", None)
        if attention is None:
            raise HSpaceError(f"{self.site.blocks}[{self.site.index}] of {self.arch} has no attention module")
        return attention

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def grid(self) -> tuple[int, int]:
        """The image tokens' grid (rows, columns), row-major in the token axis."""
        patch = 2 if self.family == "flux" else self.model.config.patch_size
        return self.latent_size[0] // patch, self.latent_size[1] // patch

    def shifts(self, sigma: float) -> bool:
        """Whether the attached controller changes h at this sigma: pass ``shifts=denoiser.shifts`` to
        ``sample_asyrp`` so steps with nothing to shift run one plain pass (a zero edit is then plain sampling
        bit for bit; the batched call on ``[x; x]`` differed by up to 6e-7 on the tiny test models)."""
        return self.controller is not None and self.controller.shifts_at(float(self.schedule.timestep(sigma)))

    # -- the hook -----------------------------------------------------------------------------------
    def _hook(self, module, inputs, output):
        tokens = self._call["image_tokens"]
        if isinstance(output, tuple):
            position = 1 if self.site.kind == "block" else 0
            h = output[position]
        else:
            h = output[:, -tokens:]
        call = self._call
        new = h
        if self.override.replacement is None and self.controller is not None:
            new = self.controller(h, call["timestep"], call["cond_or_uncond"], call["flags"], call["sigma"])
        new = self.override(new)
        if new is h:
            return output
        if isinstance(output, tuple):
            return (*output[:position], new, *output[position + 1:])
        return torch.cat([output[:, :-tokens], new], dim=1) if output.shape[1] > tokens else new

    def _rows(self, inputs: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, value in inputs.items():
            value = torch.as_tensor(value)
            if value.shape[0] not in (1, rows):
                raise HSpaceError(f"cond input {name!r}: 1 or {rows} rows expected, got shape {list(value.shape)}")
            value = value.expand(rows, *value.shape[1:]) if value.shape[0] == 1 else value
            out[name] = value.to(self.device, self.dtype if value.is_floating_point() else value.dtype)
        return out

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor | float, flags: dict[str, Any]) -> torch.Tensor:
        """The network's (guided) velocity at x (``[B, C, H, W]``) and sigma."""
        check_finite(x, "the model input x")
        if tuple(x.shape[2:]) != self.latent_size:
            raise HSpaceError(f"a latent of size {list(self.latent_size)} expected (the size this denoiser was set "
                              f"up for), got {list(x.shape[2:])}")
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device="cpu").flatten()
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        rows = x.shape[0]
        kwargs = self._rows(self.cond, rows)
        chunks = [COND]
        guided = self.cfg_scale != 1.0
        if guided:
            chunks = [UNCOND, COND]
            uncond = self._rows(self.uncond, rows)
            kwargs = {name: torch.cat([uncond[name], kwargs[name]]) for name in kwargs}
            x, sigma = torch.cat([x, x]), torch.cat([sigma, sigma])
        hidden = x.to(self.device, self.dtype)
        timestep = sigma.to(self.device, torch.float32)
        if self.family == "flux":  # Flux's forward scales sigma by 1000 itself
            rows_h, cols_h = self.grid
            hidden = pack_2x2(hidden)
            axes = (torch.zeros(1), torch.arange(rows_h, dtype=torch.float32), torch.arange(cols_h, dtype=torch.float32))
            kwargs["img_ids"] = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3).to(self.device)
            kwargs["txt_ids"] = torch.zeros(kwargs["encoder_hidden_states"].shape[1], 3, device=self.device)
        else:
            timestep = timestep * self.schedule.multiplier
        t = self._timesteps(sigma)
        self._call = {"timestep": float(t[0]), "sigma": float(sigma[0]), "cond_or_uncond": chunks, "flags": flags,
                      "image_tokens": self.grid[0] * self.grid[1]}
        handle = self.hooked.register_forward_hook(self._hook)
        try:
            out = self.model(hidden_states=hidden, timestep=timestep, return_dict=False, **kwargs)[0]
        finally:
            handle.remove()
            self._call = {}
        if self.family == "flux":
            out = unpack_2x2(out, *self.latent_size)
        out = out[:, :x.shape[1]].to(x.dtype)  # DiT with learned variance: the velocity is the first half
        if guided:
            uncond_v, cond_v = out.chunk(2)
            out = uncond_v + self.cfg_scale * (cond_v - uncond_v)
        return out

    # -- public calls -------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor | float, model_options: dict | None = None,
                 **extra: Any) -> torch.Tensor:
        """The (guided) velocity ``v = eps - x0`` at x, sigma."""
        return self._velocity(x, sigma, hspace_flags(model_options))

    def prediction(self, x: torch.Tensor, sigma: torch.Tensor | float,
                   model_options: dict | None = None) -> torch.Tensor:
        return self.velocity(x, sigma, model_options)

    def encode(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """h = the image tokens at the site for x, sigma (cond rows, unguided); the blocks after it never run."""
        with self._unguided():
            return self.override.encode(lambda: self._velocity(x, sigma, {"shift": False, "capture": False}))

    def decode_from(self, x: torch.Tensor, sigma: torch.Tensor | float, h: torch.Tensor) -> torch.Tensor:
        """The velocity with the site's image tokens replaced by ``h``; differentiable in h (unguided)."""
        with self._unguided(), self.override.replacing(h):
            return self._velocity(x, sigma, {})

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one latent x (Flux's packed tokens hold 4 channels each)."""
        return self.model.config.in_channels // (4 if self.family == "flux" else 1), *self.latent_size

    def h_shape(self) -> tuple[int, int]:
        """The per-image shape of h, ``(image tokens, dim)``, found with one pass up to the site."""
        with torch.no_grad():
            return tuple(self.encode(torch.zeros(1, *self.sample_shape), 1.0).shape[1:])

    def fingerprint(self) -> dict[str, Any]:
        """The model fingerprint with the hook site and the image tokens' grid (the token layout)."""
        return {**model_fingerprint(self.model, self.arch, self.h_shape()), "site": self.site.name,
                "grid": list(self.grid)}
