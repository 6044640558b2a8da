"""Image-specific directions, found from Jacobians through autograd: Haas et al.'s d eps / d h along one sample's
run, and Park et al.'s pullback basis of x-space with x-space guidance."""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.checks import check_choice, check_number
from ..hspace_core.direction import Direction, Inversion
from ..hspace_core.discovery.jacobian import trajectory_jacobian_directions
from ..hspace_core.discovery.pullback_edit import ddim_recording_x, park_t_boost, pullback_edit
from ..hspace_core.errors import HSpaceError
from ..hspace_core.imaging import mask_to_grid

from . import _comfy, _inputs, _sampling, comfy_adapter
from ._denoisers import autograd_denoiser
from ._types import DIRECTION

CATEGORY = "hspace/discovery"
JACOBIAN_METHODS = ("subspace", "power")
SIGNS = ("+", "-")


def _prompts(model: Any, source: list | None, edit: list | None, clip: Any) -> tuple[list | None, list | None]:
    """(source, edit) conditionings with Park's defaults: an unconnected one is the null prompt "" (encoded with
    ``clip``); pixel DDPMs take none."""
    if _sampling.is_pixel_model(model) or (source is not None and edit is not None):
        return source, edit
    if clip is None:
        raise HSpaceError("this model is text-conditioned: connect source and edit CONDITIONINGs, or a CLIP to "
                          "encode Park's default for the unconnected ones, the empty prompt")
    null = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    return (null if source is None else source), (null if edit is None else edit)


def _runner(model: Any, latent_image: dict[str, Any], seed: int, source: list | None,
            unique_id: str | None) -> Any:
    """The recipe's ``run``: an hspace sampler through ComfyUI with the source conditioning (cfg 1, so the
    negative is never evaluated), from a given x or from the seed's noise; tensors come back autograd-ready."""
    def run(fn: Any, start: torch.Tensor | None, sigmas: torch.Tensor, options: dict[str, Any]) -> tuple[Any, Any]:
        latent = {**latent_image, "samples": latent_image["samples"][:1]} if start is None else \
            {"samples": torch.zeros_like(start)}
        noise = _sampling.random_noise(latent, seed, model) if start is None else None
        with torch.inference_mode():
            samples, value = _sampling.run_sampler(model, fn, sigmas, latent, source, source, 1.0, noise, seed,
                                                   start=start, node_id=unique_id, options=options)
        if isinstance(value, tuple):
            value = tuple(comfy_adapter.grad_ready(v) for v in value)
        return samples, value

    return run


def _unedited_xs(model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int,
                 noise: Inversion | None, source: list | None,
                 unique_id: str | None) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """DDIM of one sample from seed noise, or from an inversion's record: (LATENT, x per step, sigmas)."""
    run = _runner(model, latent_image, seed, source, unique_id)
    if noise is None:
        samples, (_, xs) = run(ddim_recording_x, None, sigmas, {})
        return samples, xs[:, 0], sigmas
    samples, (_, xs) = run(ddim_recording_x, noise.x_T[:1], noise.sigmas, {"eta": noise.eta, "noises": noise.noises})
    return samples, xs[:, 0], noise.sigmas


def _source_and_edit(which: str) -> dict[str, Any]:
    return {"source": ("CONDITIONING", {"tooltip": "the prompt the image is generated or was inverted with, used to "
                                                   "regenerate and finish it (Park: the empty prompt, the default "
                                                   "with a CLIP connected); none for pixel models"}),
            "edit": ("CONDITIONING", {"tooltip": f"the edit prompt, used only for {which} (Park: the empty prompt "
                                                 "unless given; the default with a CLIP connected)"}),
            "clip": ("CLIP", {"tooltip": "encodes Park's default, the empty prompt, for an unconnected source or "
                                         "edit (text-conditioned models)"})}


class HSpaceJacobianDirections:
    """Image-specific directions (Haas et al. 2024): the top right singular vectors of J = d(mask * eps) / d h at
    every step of one sample's DDIM run; the vectors found at step_index are used at every step, scaled by each
    step's singular value. Samples the latent with the seed, or regenerates an inverted image from its noise record
    (with the source prompt); J is taken with the edit prompt. A mask localises the edit to its region."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "LATENT")
    RETURN_NAMES = ("directions", "samples")
    OUTPUT_TOOLTIPS = (
        "one direction per singular vector, scaled per step by its singular value",
        "the unedited sample's latent the directions were found along",
    )
    SEARCH_ALIASES = ["svd", "image specific direction", "jacobian"]
    FUNCTION = "discover"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model(),
                "sigmas": _inputs.sigmas(),
                "latent_image": _inputs.latent("an empty latent of batch size 1 (ignored with a noise record)"),
                "seed": _inputs.seed(),
                "num_vectors": ("INT", {"default": 3, "min": 1, "max": 64,
                                        "tooltip": "how many singular vectors (directions) to find"}),
                "step_index": ("INT", {"default": 0, "min": 0, "max": 1000,
                                       "tooltip": "the step whose vectors are used at every step (0 = first)"}),
                "method": (list(JACOBIAN_METHODS), {"tooltip": "subspace: block power iteration; power: the "
                                                                  "paper's one-vector-at-a-time iteration with "
                                                                  "deflation"}),
                "max_iter": ("INT", {"default": 50, "min": 1, "max": 1000,
                                     "tooltip": "iteration limit of the solver at each step"}),
            },
            "optional": {"noise": _inputs.noise_record("an inversion's record: find directions for that real image"),
                         "site": _inputs.hook_site(),
                         **_source_and_edit("the Jacobian"),
                         "mask": ("MASK", {"tooltip": "Haas's masked Jacobian: only eps inside the mask counts "
                                                      "(resized to the latent grid), for localised edits"})},
            "hidden": _inputs.HIDDEN,
        }

    def discover(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int, num_vectors: int,
                 step_index: int, method: str, max_iter: int, site: str | None = None, noise: Inversion | None = None,
                 source: list | None = None, edit: list | None = None, clip: Any = None,
                 mask: torch.Tensor | None = None, unique_id: str | None = None) -> dict[str, Any]:
        check_choice(method, "method", JACOBIAN_METHODS)
        check_number(num_vectors, "num_vectors", 1, integer=True)
        check_number(max_iter, "max_iter", 1, integer=True)
        steps = len(_sampling.check_sigmas(sigmas if noise is None else noise.sigmas)) - 1
        check_number(step_index, f"step_index (the schedule has {steps} steps)", 0, steps - 1, integer=True)
        source, edit = _prompts(model, source, edit, clip)
        samples, xs, sigmas = _unedited_xs(model, sigmas, latent_image, seed, noise, source, unique_id)
        output_mask = None if mask is None else mask_to_grid(mask, xs.shape[-2], xs.shape[-1])
        site = comfy_adapter.resolve_site(model, site)
        denoiser = autograd_denoiser(model, edit, site)
        progress = comfy_adapter.progress_callback(xs.shape[0], unique_id)
        with comfy_adapter.autograd_enabled():
            result = trajectory_jacobian_directions(denoiser, xs, sigmas[:-1], num_vectors, method=method,
                                                    output_mask=output_mask, callback=progress, max_iter=max_iter)
        timesteps = comfy_adapter.sigma_to_timestep(model, sigmas[:-1]).tolist()
        meta = {"method": "jacobian", "step_index": step_index, "solver": method, "masked": mask is not None,
                "hook_site": site, "fingerprint": _sampling.fingerprint(model, tuple(result.right.shape[2:]), site)}
        directions = [Direction(result.broadcast(step_index, k), timesteps, {**meta, "component": k})
                      for k in range(result.right.shape[1])]
        warning = _comfy.solver_report("the Jacobian SVD", result, max_iter)
        return {"ui": {"text": [warning] if warning else []}, "result": (directions, samples)}


class HSpacePullbackEdit:
    """Park et al. 2023: run one sample (or an inverted image) to t_edit with the source prompt, find the local basis
    of x-space from the Jacobian of the encoder x_t -> h there and move along basis vector `component` with x-space
    guidance (both with the edit prompt), and finish with DDIM and the source prompt (stochastic below t_boost). Also
    outputs the h-space tangent vectors of the basis as directions, and the singular values in Park's x_t units."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", DIRECTION, "STRING")
    RETURN_NAMES = ("samples", "h_directions", "singular_values")
    OUTPUT_TOOLTIPS = (
        "the edited sample's latent",
        "the basis vectors as h-space directions, for Apply Direction",
        "the basis' singular values (Park's x_t units)",
    )
    SEARCH_ALIASES = ["pullback", "local basis", "x-space guidance", "riemannian"]
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model(),
                "sigmas": _inputs.sigmas(),
                "latent_image": _inputs.latent("an empty latent of batch size 1 (ignored with a noise record)"),
                "seed": _inputs.seed(),
                "t_edit": _inputs.timestep(800, "the timestep at which the basis is found and the edit made"),
                "num_vectors": ("INT", {"default": 3, "min": 1, "max": 256,
                                        "tooltip": "size n of the local basis (Park: 2 for editing)"}),
                "component": ("INT", {"default": 0, "min": 0, "max": 255,
                                      "tooltip": "which basis vector to move along (0 = largest singular value)"}),
                "sign": (list(SIGNS), {"tooltip": "direction along the basis vector"}),
                "guidance_strength": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.01, "tooltip": (
                    "lambda of x-space guidance, in Park's x_t units (Park: 0.1 for CelebA-HQ; his tables give "
                    "0.5 at T, 1 at 0.8T, 4 at 0.6T for pixel models, 1 at 0.7T for Stable Diffusion)")}),
                "guidance_steps": ("INT", {"default": 16, "min": 0, "max": 256,
                                           "tooltip": "K, the x-space guidance iterations (Park: 16; 64 for SD)"}),
                "t_boost": ("INT", {"default": -1, "min": -1, "max": 999, "tooltip": (
                    "stochastic (eta 1) steps below this timestep after the edit; -1 = Park's default: 0.2T (200) "
                    "for pixel DDPMs, off for latent (SD) models, whose recipe he runs without boosting; 0 = off")}),
                "max_iter": ("INT", {"default": 50, "min": 1, "max": 1000,
                                     "tooltip": "iteration limit of the basis computation"}),
            },
            "optional": {"noise": _inputs.noise_record("an inversion's record: edit that real image"),
                         **_source_and_edit("the basis and the guidance")},
            "hidden": _inputs.HIDDEN,
        }

    def edit(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int, t_edit: int,
             num_vectors: int, component: int, sign: str, guidance_strength: float, guidance_steps: int,
             t_boost: int, max_iter: int, noise: Inversion | None = None, source: list | None = None,
             edit: list | None = None, clip: Any = None,
             unique_id: str | None = None) -> dict[str, Any]:
        check_choice(sign, "sign", SIGNS)
        if comfy_adapter.family(model) != "unet":
            raise HSpaceError(f"Pullback Edit runs on UNets (Park et al.'s x-space guidance in the VP form); "
                              f"{comfy_adapter.family(model)} is a flow-matching transformer: use Jacobian Directions")
        check_number(num_vectors, "num_vectors", 1, integer=True)
        check_number(component, "component", 0, integer=True)
        check_number(guidance_strength, "guidance_strength")
        check_number(guidance_steps, "guidance_steps", 0, integer=True)
        check_number(max_iter, "max_iter", 1, integer=True)
        _sampling.check_timestep(model, t_edit, "t_edit")
        if component >= num_vectors:
            raise HSpaceError(f"component {component} needs a basis of more than {num_vectors} vectors")
        source, edit = _prompts(model, source, edit, clip)
        if t_boost < 0:
            t_boost = park_t_boost(comfy_adapter.vp_schedule(model).num_train_timesteps,
                                   not _sampling.is_pixel_model(model))
        sigma_boost = float(comfy_adapter.timestep_to_sigma(model, t_boost)) if t_boost > 0 else 0.0
        start, eta, noises = (None, 0.0, None) if noise is None else (noise.x_T[:1], noise.eta, noise.noises)
        sigmas = sigmas if noise is None else noise.sigmas
        timesteps = comfy_adapter.sigma_to_timestep(model, sigmas[:-1]).tolist()
        denoiser = autograd_denoiser(model, edit)
        with comfy_adapter.autograd_enabled():
            result = pullback_edit(_runner(model, latent_image, seed, source, unique_id), denoiser, sigmas, timesteps,
                                   t_edit, sigma_boost, start=start, num_vectors=num_vectors, component=component,
                                   sign=1.0 if sign == "+" else -1.0, guidance_strength=guidance_strength,
                                   guidance_steps=guidance_steps, max_iter=max_iter, seed=seed, eta=eta, noises=noises,
                                   callback=comfy_adapter.progress_callback(max_iter, unique_id))
        basis = result.basis
        meta = {"method": "pullback", "timestep": result.timestep,
                "fingerprint": _sampling.fingerprint(model, tuple(basis.h_basis.shape[1:]))}
        directions = [Direction(u, None, {**meta, "component": i}) for i, u in enumerate(basis.h_basis)]
        values = ", ".join(f"{float(s):.4g}" for s in basis.singular_values)
        report = f"t = {result.timestep:.0f}: singular values (x_t units) {values}"
        warning = _comfy.solver_report("the pullback basis", basis, max_iter)
        report = report if warning is None else f"{report}\n{warning}"
        # a pixel model's edit is shown on the node beside the unedited run it was made from
        preview = _sampling.pixel_preview(model, result.output["samples"], result.unedited["samples"])
        return {"ui": {"text": [report], "images": preview}, "result": (result.output, directions, report)}


NODE_CLASSES = (HSpaceJacobianDirections, HSpacePullbackEdit)
DISPLAY_NAMES = {"HSpaceJacobianDirections": "Jacobian Directions (hspace)",
                 "HSpacePullbackEdit": "Pullback Edit (hspace)"}
