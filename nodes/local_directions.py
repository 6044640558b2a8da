"""Image-specific directions, found from Jacobians through autograd: Haas et al.'s d eps / d h along one sample's
run, and Park et al.'s pullback basis of x-space with x-space guidance."""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.checks import check_choice, check_number
from ..hspace_core.direction import Direction
from ..hspace_core.discovery.jacobian import trajectory_jacobian_directions
from ..hspace_core.discovery.pullback import encoder_function, pullback_basis, x_space_guidance
from ..hspace_core.errors import HSpaceError
from ..hspace_core.samplers import sample_asyrp, sample_ddim

from . import _comfy, _inputs, _sampling, comfy_adapter
from ._denoisers import autograd_denoiser
from ._types import DIRECTION, NoiseRecord

CATEGORY = "hspace/discovery"
JACOBIAN_METHODS = ("subspace", "power")
SIGNS = ("+", "-")


def _ddim_recording_x(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                      callback: Any = None, disable: bool | None = None, **options: Any) -> tuple:
    """sample_ddim that also returns x at every step, ``[S, B, C, H, W]``."""
    xs: list[torch.Tensor] = []

    def record(info: dict[str, Any]) -> None:
        xs.append(info["x"].detach().clone())
        if callback is not None:
            callback(info)

    return sample_ddim(model, x, sigmas, extra_args, record, disable, **options), torch.stack(xs)


def _unedited_run(model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int,
                  noise: NoiseRecord | None, positive: list | None,
                  unique_id: str | None) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """DDIM of one sample (from seed noise, or from an inversion's record): (LATENT, x per step, sigmas)."""
    if noise is None:
        start, options = None, {}
        latent = {**latent_image, "samples": latent_image["samples"][:1]}
        start_noise = _sampling.random_noise(latent, seed, model)
    else:
        start, options, sigmas = noise.x_T[:1], {"eta": noise.eta, "noises": noise.noises}, noise.sigmas
        latent, start_noise = {"samples": torch.zeros_like(start)}, None
    # cfg 1: the negative is never evaluated, the positive stands in for it
    samples, (_, xs) = _sampling.run_sampler(model, _ddim_recording_x, sigmas, latent, positive, positive, 1.0,
                                             start_noise, seed, start=start, node_id=unique_id, options=options)
    return samples, xs[:, 0], sigmas


class HSpaceJacobianDirections:
    """Image-specific directions (Haas et al. 2024): the top right singular vectors of J = d eps / d h at every step
    of one sample's DDIM run; the vectors found at step_index are used at every step, scaled by each step's
    singular value. Samples the latent with the seed, or regenerates an inverted image from its noise record."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "LATENT")
    RETURN_NAMES = ("directions", "samples")
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
                         "positive": _inputs.conditioning("positive")},
            "hidden": _inputs.HIDDEN,
        }

    def discover(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int, num_vectors: int,
                 step_index: int, method: str, max_iter: int, noise: NoiseRecord | None = None,
                 positive: list | None = None, unique_id: str | None = None) -> dict[str, Any]:
        check_choice(method, "method", JACOBIAN_METHODS)
        check_number(num_vectors, "num_vectors", 1, integer=True)
        check_number(max_iter, "max_iter", 1, integer=True)
        steps = len(_sampling.check_sigmas(sigmas if noise is None else noise.sigmas)) - 1
        check_number(step_index, f"step_index (the schedule has {steps} steps)", 0, steps - 1, integer=True)
        samples, xs, sigmas = _unedited_run(model, sigmas, latent_image, seed, noise, positive, unique_id)
        denoiser = autograd_denoiser(model, positive)
        progress = comfy_adapter.progress_callback(xs.shape[0], unique_id)
        with comfy_adapter.autograd_enabled():
            result = trajectory_jacobian_directions(denoiser, comfy_adapter.grad_ready(xs), sigmas[:-1],
                                                    num_vectors, method=method, callback=progress, max_iter=max_iter)
        timesteps = comfy_adapter.sigma_to_timestep(model, sigmas[:-1]).tolist()
        meta = {"method": "jacobian", "step_index": step_index, "solver": method,
                "fingerprint": _sampling.fingerprint(model, tuple(result.right.shape[2:]))}
        directions = [Direction(result.broadcast(step_index, k), timesteps, {**meta, "component": k})
                      for k in range(result.right.shape[1])]
        warning = _comfy.solver_report("the Jacobian SVD", result, max_iter)
        return {"ui": {"text": [warning] if warning else []}, "result": (directions, samples)}


class HSpacePullbackEdit:
    """Park et al. 2023: run one sample (or an inverted image) to t_edit, find the local basis of x-space from the
    Jacobian of the encoder x -> h there, move along basis vector `component` with x-space guidance, and finish
    with DDIM (stochastic below t_boost). Also outputs the h-space tangent vectors of the basis as directions."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", DIRECTION, "STRING")
    RETURN_NAMES = ("samples", "h_directions", "singular_values")
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
                "guidance_strength": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.01,
                                                "tooltip": "lambda of x-space guidance (Park: 0.1 at T, more later)"}),
                "guidance_steps": ("INT", {"default": 16, "min": 0, "max": 256,
                                           "tooltip": "K, the x-space guidance iterations (Park: 16)"}),
                "t_boost": _inputs.timestep(0, "stochastic (eta 1) steps below t_boost after the edit; 0 = off"),
                "max_iter": ("INT", {"default": 50, "min": 1, "max": 1000,
                                     "tooltip": "iteration limit of the basis computation"}),
            },
            "optional": {"noise": _inputs.noise_record("an inversion's record: edit that real image"),
                         "positive": _inputs.conditioning("positive (the edit prompt)")},
            "hidden": _inputs.HIDDEN,
        }

    def edit(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], seed: int, t_edit: int,
             num_vectors: int, component: int, sign: str, guidance_strength: float, guidance_steps: int,
             t_boost: int, max_iter: int, noise: NoiseRecord | None = None, positive: list | None = None,
             unique_id: str | None = None) -> dict[str, Any]:
        check_choice(sign, "sign", SIGNS)
        check_number(num_vectors, "num_vectors", 1, integer=True)
        check_number(component, "component", 0, integer=True)
        check_number(guidance_strength, "guidance_strength")
        check_number(guidance_steps, "guidance_steps", 0, integer=True)
        check_number(max_iter, "max_iter", 1, integer=True)
        _sampling.check_timestep(model, t_edit, "t_edit")
        if component >= num_vectors:
            raise HSpaceError(f"component {component} needs a basis of more than {num_vectors} vectors")
        _, xs, sigmas = _unedited_run(model, sigmas, latent_image, seed, noise, positive, unique_id)
        step, timestep = _step_at(model, sigmas, t_edit)
        denoiser = autograd_denoiser(model, positive)
        with comfy_adapter.autograd_enabled():
            x = comfy_adapter.grad_ready(xs[step])
            basis = pullback_basis(encoder_function(denoiser, float(sigmas[step])), x, num_vectors, max_iter=max_iter,
                                   callback=comfy_adapter.progress_callback(max_iter, unique_id))
            v = basis.x_basis[component] * (1.0 if sign == "+" else -1.0)
            edited = _guide(denoiser, x, v, float(sigmas[step]), guidance_strength, guidance_steps)
        samples = _finish(model, edited.detach().unsqueeze(0), sigmas[step:], t_boost, seed, noise, step, positive,
                          unique_id)
        meta = {"method": "pullback", "timestep": timestep,
                "fingerprint": _sampling.fingerprint(model, tuple(basis.h_basis.shape[1:]))}
        directions = [Direction(u, None, {**meta, "component": i}) for i, u in enumerate(basis.h_basis)]
        values = ", ".join(f"{float(s):.4g}" for s in basis.singular_values)
        report = f"t = {timestep:.0f}: singular values {values}"
        warning = _comfy.solver_report("the pullback basis", basis, max_iter)
        report = report if warning is None else f"{report}\n{warning}"
        return {"ui": {"text": [report]}, "result": (samples, directions, report)}


def _step_at(model: Any, sigmas: torch.Tensor, t_edit: float) -> tuple[int, float]:
    """The first step of the schedule at or below timestep t_edit (the last step if none), and its timestep."""
    timesteps = comfy_adapter.sigma_to_timestep(model, sigmas[:-1]).tolist()
    step = next((i for i, t in enumerate(timesteps) if t <= t_edit), len(timesteps) - 1)
    return step, float(timesteps[step])


def _guide(denoiser: Any, x: torch.Tensor, v: torch.Tensor, sigma: float, strength: float,
           steps: int) -> torch.Tensor:
    """Park's x-space guidance in his units, x_t = sqrt(alpha_bar) x (hspace's x is x_t / sqrt(alpha_bar)), so that
    his step size and strengths carry over; v is a unit vector either way."""
    scale = (1.0 + sigma ** 2) ** -0.5
    guided = x_space_guidance(lambda z: denoiser.eps(z / scale, sigma), x * scale, v, strength=strength,
                              num_iters=steps)
    return guided[-1] / scale


def _finish(model: Any, start: torch.Tensor, sigmas: torch.Tensor, t_boost: float, seed: int,
            noise: NoiseRecord | None, step: int, positive: list | None, unique_id: str | None) -> dict[str, Any]:
    """Sample from an edited x down to 0: DDIM, stochastic below t_boost; an edit-friendly record's noise terms
    continue from ``step``."""
    last = len(comfy_adapter.model_sampling(model).sigmas) - 1
    options = {**_sampling.asyrp_options(model, "symmetric", last, t_boost), "eta_boost": 1.0, "seed": seed}
    if noise is not None and noise.noises is not None:
        options.update(eta=noise.eta, eta_boost=noise.eta, noises=noise.noises[step:])
    samples, _ = _sampling.run_sampler(model, sample_asyrp, sigmas, {"samples": torch.zeros_like(start)}, positive,
                                       positive, 1.0, start=start, node_id=unique_id, options=options)
    return samples


NODE_CLASSES = (HSpaceJacobianDirections, HSpacePullbackEdit)
DISPLAY_NAMES = {"HSpaceJacobianDirections": "Jacobian Directions (hspace)",
                 "HSpacePullbackEdit": "Pullback Edit (hspace)"}
