"""Running hspace_core's k-diffusion samplers on a ComfyUI MODEL, and what the nodes need around that.

:func:`run_sampler` goes through ``comfy.sample.sample_custom`` (so CFG, conditioning, latent formats and
model patches behave as in SamplerCustom) with the sampler function wrapped as a KSAMPLER; it returns the
LATENT and the sampler function's own return value in model space (x_T and the noise terms of an
inversion, for example). The adapter (``comfy_adapter``) does the patching and the schedule conversions.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..hspace_core.bottleneck import Bottleneck
from ..hspace_core.checks import check_number
from ..hspace_core.direction import Trajectory, model_fingerprint
from ..hspace_core.errors import HSpaceError
from ..hspace_core.schedule import FLOW, FlowSchedule, check_sigmas, window_sigmas

from . import _comfy, comfy_adapter, pixel_model
from ._display import beside, enlarged
from .pixel_latents import latent_to_image

Progress = _comfy.SamplingCallback

SamplerFn = Callable[..., Any]


def is_pixel_model(model: Any) -> bool:
    """Whether a MODEL is a pixel model of the pack's loader (a diffusers UNet or DiT, unconditional)."""
    return isinstance(comfy_adapter.diffusion_model(model), pixel_model.PIXEL_WRAPPERS)


def conditioning(model: Any, value: list | None, which: str) -> list:
    """The CONDITIONING to sample with: the one wired, or for a pixel DDPM an empty one it ignores."""
    if value is not None:
        return value
    if not is_pixel_model(model):
        raise HSpaceError(f"this model is text-conditioned: connect a {which} CONDITIONING (CLIP Text Encode)")
    return [[torch.zeros(1, 1, 1), {}]]


def pixel_preview(model: Any, edited: torch.Tensor, original: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """A pixel DDPM's result as ComfyUI previews for a node's ``ui["images"]``, enlarged for display, each beside
    its original where that is given (same shape); [] for latent models (their latents need a VAE to be seen)."""
    if not is_pixel_model(model):
        return []
    shown = enlarged(latent_to_image(edited))
    if original is not None and original.shape == edited.shape:
        shown = beside(enlarged(latent_to_image(original)), shown)
    return _comfy.preview_images(shown)


def fingerprint(model: Any, h_shape: tuple[int, ...], hook_site: str | None = None) -> dict[str, Any]:
    """hspace's model fingerprint of a ComfyUI MODEL (architecture, h shape, sampled weights hash; a transformer's
    hook site, which a UNet's middle block leaves out as the default). The pack's pixel models (the embedded UNet
    and DiT, diffusers pixel DDPMs) get the library's own fingerprint of that network, so direction files go both
    ways between the library and ComfyUI."""
    inner = comfy_adapter.diffusion_model(model)
    if isinstance(inner, pixel_model.DiffusersDiTWrapper):
        return inner.denoiser(comfy_adapter.resolve_site(model, hook_site)).fingerprint()
    arch = type(comfy_adapter.base_model(model)).__name__
    if comfy_adapter.family(model) == "unet":
        comfy_adapter.resolve_site(model, hook_site)
        if isinstance(inner, pixel_model.DiffusersUNetWrapper):  # the library's fingerprint of that diffusers UNet
            return model_fingerprint(inner.unet, type(inner.unet).__name__, h_shape)
        return model_fingerprint(comfy_adapter.check_unet(model), arch, h_shape)
    return {**model_fingerprint(comfy_adapter.diffusion_model(model), arch, h_shape),
            "site": comfy_adapter.resolve_site(model, hook_site)}


def _latent_samples(model: Any, latent: dict[str, Any]) -> torch.Tensor:
    """The latent tensor as the model expects it (an empty latent gets the model's channels and downscale)."""
    sample = _comfy.require("comfy.sample")
    return sample.fix_empty_latent_channels(model, latent["samples"], latent.get("downscale_ratio_spacial"))


def latent_output(latent: dict[str, Any], samples: torch.Tensor) -> dict[str, Any]:
    """A LATENT like ``latent`` holding ``samples`` (without the empty latent's downscale marker)."""
    out = {k: v for k, v in latent.items() if k != "downscale_ratio_spacial"}
    out["samples"] = samples
    return out


def run_comfy_sampler(model: Any, sampler: Any, sigmas: torch.Tensor, latent: dict[str, Any], positive: list | None,
                      negative: list | None, cfg: float, noise: torch.Tensor | None = None, seed: int = 0,
                      node_id: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """SamplerCustom's sampling with a SAMPLER object; ``noise`` None means no added noise. Returns a LATENT.

    Progress goes to ``progress(step, x0, x, total_steps)``, or by default to the node's progress bar with latent
    previews, as in SamplerCustom.
    """
    sample = _comfy.require("comfy.sample")
    sigmas = check_sigmas(sigmas)
    samples = _latent_samples(model, latent)
    callback = _comfy.preview_callback(model, len(sigmas) - 1) if progress is None else progress
    noise = torch.zeros_like(samples) if noise is None else noise
    out = sample.sample_custom(model, noise, cfg, sampler, sigmas, conditioning(model, positive, "positive"),
                               conditioning(model, negative, "negative"), samples,
                               noise_mask=latent.get("noise_mask"), callback=callback, disable_pbar=True, seed=seed)
    return latent_output(latent, out)


def run_sampler(model: Any, fn: SamplerFn, sigmas: torch.Tensor, latent: dict[str, Any], positive: list | None,
                negative: list | None, cfg: float, noise: torch.Tensor | None = None, seed: int = 0,
                start: torch.Tensor | None = None, node_id: str | None = None,
                options: dict[str, Any] | None = None, progress: Progress | None = None) -> tuple[dict[str, Any], Any]:
    """Run the sampler function ``fn`` (with keyword ``options``) through ComfyUI; ``(LATENT, fn's return value)``.

    The return value stays in model space (x_T and the noise terms of an inversion, for example);
    ``start`` replaces the sampler's start x outright (a recorded x_T). A flow-matching (CONST) model samples in
    hspace's flow form; with neither noise nor start its start x is the latent itself (an inversion's image).
    """
    returned: dict[str, Any] = {}
    flow = comfy_adapter.noise_form(model) is FLOW
    if flow:
        options = {"form": FLOW, **(options or {})}
        if start is None and noise is None:  # no noise added: x is the latent itself, as in the VE form (ComfyUI's
            # CONST noise scaling would start from (1 - sigma) latent, the zero latent at sigma 1)
            start = comfy_adapter.base_model(model).process_latent_in(_latent_samples(model, latent))

    def recorded(model_k: Any, x: torch.Tensor, sigmas_k: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        returned["value"] = fn(model_k, x if start is None else start.to(x), sigmas_k, **kwargs)
        out = returned["value"]
        return out[0] if isinstance(out, tuple) else out

    sampler = comfy_adapter.as_comfy_sampler(recorded, **(options or {}))
    latent_out = run_comfy_sampler(model, sampler, sigmas, latent, positive, negative, cfg, noise, seed, node_id,
                                   progress)
    if flow:  # the last x as it is, without ComfyUI's division by 1 - sigma (infinite for an inversion's x_T)
        value = returned["value"]
        last = comfy_adapter.base_model(model).process_latent_out(value[0] if isinstance(value, tuple) else value)
        latent_out = latent_output(latent, last.to(latent_out["samples"]))
    return latent_out, returned.get("value")


def asyrp_options(model: Any, mode: str, t_edit: float, t_boost: float,
                  sigmas: torch.Tensor | None = None) -> dict[str, Any]:
    """``sample_asyrp`` options for an edit window [T, t_edit] and quality boosting below t_boost (timesteps).

    With the schedule known, a window that no step falls in is refused (hspace_core's ``window_sigmas``).
    """
    if sigmas is not None:
        sigma_edit, sigma_boost = window_sigmas(comfy_adapter.schedule(model), sigmas, t_edit, t_boost)
        return {"mode": mode, "sigma_edit": sigma_edit, "sigma_boost": sigma_boost}
    check_timestep(model, t_edit, "t_edit")
    check_timestep(model, t_boost, "t_boost")
    if t_boost > t_edit:
        raise HSpaceError(f"t_boost ({t_boost}) must not exceed t_edit ({t_edit}): no step would be edited")
    sigma_boost = float(comfy_adapter.timestep_to_sigma(model, t_boost)) if t_boost > 0 else 0.0
    return {"mode": mode, "sigma_edit": float(comfy_adapter.timestep_to_sigma(model, t_edit)),
            "sigma_boost": sigma_boost}


def check_timestep(model: Any, timestep: float, name: str) -> float:
    """A timestep inside the model's range, [0, number of training timesteps - 1]."""
    if comfy_adapter.noise_form(model) is FLOW:
        last = FlowSchedule().num_train_timesteps - 1
    else:
        last = len(comfy_adapter.model_sampling(model).sigmas) - 1
    return check_number(timestep, f"{name} (the model's timesteps)", 0, last)


def random_noise(latent: dict[str, Any], seed: int, model: Any) -> torch.Tensor:
    """ComfyUI's noise for a latent and seed (what KSampler draws)."""
    return _comfy.seeded_noise(_latent_samples(model, latent), seed, latent)


def capture(model: Any, fn: SamplerFn, sigmas: torch.Tensor, latent: dict[str, Any], positive: list | None,
            negative: list | None, cfg: float, noise: torch.Tensor | None, seed: int,
            meta: dict[str, Any] | None = None, node_id: str | None = None, options: dict[str, Any] | None = None,
            progress: Progress | None = None, hook_site: str | None = None) -> tuple[dict[str, Any], Any, Trajectory]:
    """:func:`run_sampler` on a copy of the model that records h at the hook site on every call; the cond rows'
    trajectory, with the site in its meta (``hook_site``) and fingerprint."""
    site = comfy_adapter.resolve_site(model, hook_site)
    controller = Bottleneck(capture=True)
    patched = comfy_adapter.patch_model(model, controller, hook_site=site)
    latent_out, value = run_sampler(patched, fn, sigmas, latent, positive, negative, cfg, noise, seed,
                                     node_id=node_id, options=options, progress=progress)
    trajectory = controller.trajectory("cond", {**(meta or {}), "hook_site": site})
    trajectory.meta["fingerprint"] = fingerprint(model, tuple(trajectory.h.shape[2:]), site)
    return latent_out, value, trajectory
