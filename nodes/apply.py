"""Applying directions: a model patch that edits under any sampler, the Asyrp SAMPLER, a strength sweep."""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.bottleneck import ROW_CHOICES, Bottleneck, EditSpec
from ..hspace_core.checks import check_choice, check_number
from ..hspace_core.denoisers import hspace_flags
from ..hspace_core.errors import HSpaceError
from ..hspace_core.samplers import MODES, sample_asyrp, sample_ddim
from ..hspace_core.schedule import FLOW, at_or_above, check_sigmas
from ..hspace_core.sites import MID_BLOCK

from . import _comfy, _inputs, _sampling, comfy_adapter
from ._grid import labelled_grid
from .pixel_latents import latent_to_image
from ._types import DirectionSet, single

CATEGORY = "hspace/sampling"


def _strength(default: float, tooltip: str) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": -1000.0, "max": 1000.0, "step": 0.05, "tooltip": tooltip})


WINDOWS = ("direction", "percent")
# Haas et al.'s Stable Diffusion code shifts the cond and uncond rows alike, so the edit does not grow with cfg
ROWS = ("both", *[r for r in ROW_CHOICES if r != "both"])


def apply_direction(model: Any, directions: DirectionSet, strength: float, window: str, start_percent: float,
                    end_percent: float, rows: str, allow_foreign: bool) -> Any:
    """A patched clone of ``model`` that adds ``strength`` times the direction to h inside the window: the
    direction's own edit window, or start_percent..end_percent."""
    direction = single(directions)
    site = comfy_adapter.resolve_site(model, direction.meta.get("hook_site", MID_BLOCK))
    direction.check_model(_sampling.fingerprint(model, _model_h_shape(model, direction), site), allow_foreign)
    if window not in WINDOWS:
        raise HSpaceError(f"window must be one of {WINDOWS}, got {window!r}")
    timesteps = comfy_adapter.percent_window(model, start_percent, end_percent) if window == "percent" else None
    controller = Bottleneck([EditSpec(direction, strength)], window=timesteps, rows=rows)
    return comfy_adapter.patch_model(model, controller, hook_site=site)


def _model_h_shape(model: Any, direction: Any) -> tuple[int, ...]:
    """The model's h shape as far as it is known before sampling: the channels its middle block puts out (the
    output bias of its last layer; a transformer's token width) and the direction's spatial size or token count
    (the model's follows the latent)."""
    if comfy_adapter.family(model) != "unet":
        return (direction.h_shape[0], comfy_adapter.token_dim(model) or direction.h_shape[-1])
    last = list(comfy_adapter.check_unet(model).middle_block.parameters())[-1]
    return (int(last.shape[0]), *direction.h_shape[1:])


def apply_inputs() -> dict[str, Any]:
    return {
        "strength": _strength(1.0, "how far to move along the direction. PCA directions: in standard deviations "
                                   "of h; Haas et al.'s +-5 std is for their symmetric DDPM step, and per std the "
                                   "asymmetric DDIM step moves the image about 1-2x as far, the symmetric DDIM step "
                                   "about 0.6x (embedded model, see the docs). Under the asymmetric step the shift is "
                                   "normalised to the step count (Asyrp's N_train / N_test)"),
        "window": (list(WINDOWS), {"tooltip": "direction: the direction's own edit window (an Asyrp direction's "
                                              "[t_edit, T]; every step for one without a window); percent: "
                                              "start_percent..end_percent, overriding it"}),
        "start_percent": _inputs.percent(0.0, "window = percent: edit from this point of the sampling process "
                                              "(0 = first step)"),
        "end_percent": _inputs.percent(1.0, "window = percent: edit until this point (1 = last step)"),
        "rows": (list(ROWS), {"tooltip": "which CFG rows are edited: both (Haas et al.'s default: the edit does "
                                         "not scale with cfg), cond (positive) or uncond"}),
        "allow_foreign": ("BOOLEAN", {"default": False, "tooltip": "apply a direction made for another model "
                                                                     "(same h shape) instead of refusing it"}),
    }


class HSpaceApplyDirection:
    """Patch a MODEL so that every sampler (KSampler, SamplerCustom, ...) samples with h shifted along a direction
    between start_percent and end_percent. The input MODEL is left unchanged."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("the input MODEL patched to shift h along the direction; connect it to any sampler",)
    SEARCH_ALIASES = ["edit", "semantic direction", "h-space", "latent direction", "steer"]
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": _inputs.model(), "direction": _inputs.direction(), **apply_inputs()}}

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent: Any = None, end_percent: Any = None) -> str | bool:
        return _inputs.window_problem(start_percent, end_percent)

    def apply(self, model: Any, direction: DirectionSet, strength: float, window: str, start_percent: float,
              end_percent: float, rows: str, allow_foreign: bool) -> tuple[Any]:
        return (apply_direction(model, direction, strength, window, start_percent, end_percent, rows, allow_foreign),)


class HSpaceAsyrpSampler:
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced running Asyrp's reverse process (Kwon et al.): with a
    model from Apply Direction, edit for t >= t_edit (asymmetric: x0 from the shifted h, the noise direction from
    the unshifted one; symmetric: both shifted), plain DDIM below, and stochastic steps without edit below t_boost.
    h is shifted where both t_edit and Apply Direction's window allow; under the asymmetric step the shift is
    normalised to the step count (Asyrp's N_train / N_test), so 20 or 100 steps give the same edit."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("a SAMPLER for SamplerCustom running Asyrp's asymmetric reverse process",)
    SEARCH_ALIASES = ["asymmetric reverse process", "asyrp", "edit sampler"]
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": _inputs.model("the model whose timesteps t_edit and t_boost refer to"),
            "mode": (list(MODES), {"tooltip": "asymmetric: Asyrp's process; symmetric: the shift enters both terms"}),
            "t_edit": _inputs.timestep(400, "edit at timesteps >= t_edit (and inside Apply Direction's window: an "
                                            "Asyrp direction keeps its own [t_edit, T] unless window = percent)"),
            "t_boost": _inputs.timestep(0, "no edit and eta_boost below t_boost (quality boosting); 0 = off"),
            "eta": _inputs.eta(0.0, "eta of the steps above t_boost (0 = deterministic DDIM)"),
            "eta_boost": _inputs.eta(1.0, "eta of the boosted steps below t_boost (1 = DDPM)"),
            "seed": _inputs.seed("seed of the noise of stochastic steps"),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, t_edit: Any = None, t_boost: Any = None) -> str | bool:
        return _inputs.timestep_window_problem(t_edit, t_boost)

    def make(self, model: Any, mode: str, t_edit: int, t_boost: int, eta: float, eta_boost: float,
             seed: int) -> tuple[Any]:
        check_choice(mode, "mode", MODES)
        check_number(eta, "eta", 0.0, 1.0)
        check_number(eta_boost, "eta_boost", 0.0, 1.0)
        options = _sampling.asyrp_options(model, mode, t_edit, t_boost)
        if comfy_adapter.noise_form(model) is FLOW:
            options["form"] = FLOW
        return (comfy_adapter.as_comfy_sampler(_asyrp_in_window, **options, eta=eta, eta_boost=eta_boost, seed=seed),)


def _asyrp_in_window(model: Any, x: torch.Tensor, sigmas: torch.Tensor, *args: Any, sigma_edit: float,
                     **options: Any) -> torch.Tensor:
    """sample_asyrp, refusing a schedule whose steps all lie below the edit window (nothing would be edited). A
    model without an hspace patch (none published ``shifts_at``) shifts nothing: its steps are the plain sampler's
    single passes, as after a zero edit (not the batched [x; x] call, whose doubled batch can change the last bits)."""
    if not at_or_above(sigmas[:-1].max(), sigma_edit):
        raise HSpaceError(f"no step of this schedule reaches t_edit: its largest sigma {float(sigmas[:-1].max()):.4g} "
                          f"is below the window's {sigma_edit:.4g}; lower t_edit or use more of the schedule")
    if "shifts_at" not in hspace_flags((options.get("extra_args") or {}).get("model_options")):
        options.setdefault("shifts", lambda sigma: False)
    return sample_asyrp(model, x, sigmas, *args, sigma_edit=sigma_edit, **options)


class HSpaceStrengthSweep:
    """Sample the same noise at evenly spaced strengths of a direction and lay the results out as a labelled grid
    (columns: strengths, rows: the latent's batch). Uses DDIM unless a SAMPLER is connected."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("grid", "images")
    OUTPUT_TOOLTIPS = (
        "all strengths as one labelled grid (columns: strengths, rows: the batch)",
        "every sample, strength after strength, as a batch of IMAGEs",
    )
    SEARCH_ALIASES = ["sweep", "strength grid", "xy plot", "compare strengths"]
    FUNCTION = "sweep"
    OUTPUT_NODE = True  # shows its grid as a preview even with nothing connected

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        inputs = apply_inputs()
        del inputs["strength"]
        return {
            "required": {
                "model": _inputs.model(),
                "direction": _inputs.direction(),
                "sigmas": _inputs.sigmas(),
                "latent_image": _inputs.latent("an empty latent; its batch size is the number of rows of the grid"),
                "seed": _inputs.seed(),
                "cfg": _inputs.cfg(),
                "strength_min": _strength(-2.0, "strength of the first column"),
                "strength_max": _strength(2.0, "strength of the last column"),
                "count": ("INT", {"default": 5, "min": 2, "max": 64, "tooltip": "number of strengths (columns)"}),
                **inputs,
            },
            "optional": {
                **_inputs.optional_conditioning(),
                "vae": ("VAE", {"tooltip": "decodes the samples; leave unconnected for pixel models"}),
                "sampler": ("SAMPLER", {"tooltip": "sampler to use (e.g. Asyrp Sampler); default DDIM, eta 0"}),
            },
            "hidden": _inputs.HIDDEN,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent: Any = None, end_percent: Any = None) -> str | bool:
        return _inputs.window_problem(start_percent, end_percent)

    def sweep(self, model: Any, direction: DirectionSet, sigmas: torch.Tensor, latent_image: dict[str, Any],
              seed: int, cfg: float, strength_min: float, strength_max: float, count: int, window: str,
              start_percent: float, end_percent: float, rows: str, allow_foreign: bool, positive: list | None = None,
              negative: list | None = None, vae: Any = None, sampler: Any = None,
              unique_id: str | None = None) -> dict[str, Any]:
        check_number(count, "count", 2, integer=True)
        check_number(strength_min, "strength_min")
        check_number(strength_max, "strength_max")
        strengths = [strength_min + (strength_max - strength_min) * i / (count - 1) for i in range(count)]
        noise = _sampling.random_noise(latent_image, seed, model)
        steps = len(check_sigmas(sigmas)) - 1
        previews = _comfy.preview_callback(model, count * steps)
        flow = {"form": FLOW} if comfy_adapter.noise_form(model) is FLOW else {}
        sampler = sampler or comfy_adapter.as_comfy_sampler(sample_ddim, **flow)
        columns = []
        for i, strength in enumerate(strengths):
            patched = apply_direction(model, direction, strength, window, start_percent, end_percent, rows,
                                      allow_foreign)
            progress = _comfy.offset_callback(previews, i * steps, count * steps)
            latent = _sampling.run_comfy_sampler(patched, sampler, sigmas, latent_image, positive, negative, cfg,
                                                 noise, seed, progress=progress)
            columns.append(_decode(latent["samples"], vae))
        grid = labelled_grid(columns, [f"{s:+.2f}" for s in strengths])
        # the grid's pixel size lets the frontend (web/js/hspace.js) size the node to show all of it
        ui: dict[str, Any] = {"hspace_sweep": [{"strengths": strengths, "rows": int(columns[0].shape[0]),
                                                "width": int(grid.shape[2]), "height": int(grid.shape[1])}]}
        ui["images"] = _comfy.preview_images(grid)  # the grid as a preview on the node, like PreviewImage
        return {"ui": ui, "result": (grid, torch.cat(columns))}


def _decode(samples: torch.Tensor, vae: Any) -> torch.Tensor:
    if vae is not None:
        images = vae.decode(samples)
        return images.reshape(-1, *images.shape[-3:])
    if samples.shape[1] not in (1, 3):
        raise HSpaceError(f"latents with {samples.shape[1]} channels need a VAE to become images: connect one")
    return latent_to_image(samples)


NODE_CLASSES = (HSpaceApplyDirection, HSpaceAsyrpSampler, HSpaceStrengthSweep)
DISPLAY_NAMES = {"HSpaceApplyDirection": "Apply Direction (hspace)", "HSpaceAsyrpSampler": "Asyrp Sampler (hspace)",
                 "HSpaceStrengthSweep": "Strength Sweep (hspace)"}
