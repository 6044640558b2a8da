"""Park et al.'s edit recipe (``run_edit_local_encoder_pullback_zt`` of their code), for the library and the nodes.

1. run the image (seed noise, or an inversion's x_T) with DDIM to the step at t_edit — **source conditioning**;
2. the local basis there, from the encoder x_t -> h — **edit conditioning**;
3. x-space guidance along ±basis vector ``component`` — **edit conditioning**;
4. finish with DDIM, η = 1 below t_boost — **source conditioning**.

Park's Stable Diffusion defaults: the source (inversion and regeneration) prompt is the null prompt ``""`` and the
edit prompt defaults to ``""`` too, all without CFG; no boosting for SD (his argument check asserts
``performance_boosting_t <= 0``), boosting below 0.2T for pixel DDPMs (``performance_boosting_t 0.2``).

Units: Park works on x_t = sqrt(ᾱ)·x (hspace's k-diffusion x = x_t / sqrt(ᾱ), sqrt(ᾱ) = 1 / sqrt(1 + σ²)); his
λ, step size and singular values are in x_t units, and so are this module's (:func:`park_encoder`,
:func:`guide`), so that his strengths carry over.

The sampling phases go through a ``run`` callable so that the same recipe drives a diffusers denoiser here and a
ComfyUI MODEL in the nodes: ``run(fn, start, sigmas, options) -> (output, fn's return value)`` samples with the
source conditioning, from ``start`` (None: the runner's own seed noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import HSpaceError
from ..samplers import sample_asyrp, sample_ddim
from .jacobian import BatchFunction
from .pullback import PullbackBasis, pullback_basis, x_space_guidance

Runner = Callable[[Callable[..., Any], "torch.Tensor | None", torch.Tensor, dict[str, Any]], tuple[Any, Any]]
Callback = Callable[[dict[str, Any]], None]

PARK_BOOST_FRACTION = 0.2  # η = 1 below 0.2T after a pixel-DDPM edit; none for Stable Diffusion
PARK_GUIDANCE_STEPS = 16  # K, for pixel DDPMs (his SD example script uses 64 with λ = 1)


def park_t_boost(num_train_timesteps: int, latent_model: bool) -> float:
    """Park's boosting threshold: 0.2T for pixel DDPMs, none (0) for latent (Stable Diffusion) models."""
    return 0.0 if latent_model else PARK_BOOST_FRACTION * num_train_timesteps


def ddim_recording_x(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                     callback: Callback | None = None, disable: bool | None = None,
                     **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~hspace_core.samplers.sample_ddim` that also returns x at every step, ``[S, B, C, H, W]``."""
    xs: list[torch.Tensor] = []

    def record(info: dict[str, Any]) -> None:
        xs.append(info["x"].detach().clone())
        if callback is not None:
            callback(info)

    return sample_ddim(model, x, sigmas, extra_args, record, disable, **options), torch.stack(xs)


def step_at(timesteps: Sequence[float], t_edit: float) -> int:
    """The first step at or below timestep ``t_edit`` (the last step if none): where Park edits."""
    if not len(timesteps):
        raise HSpaceError("a schedule of at least one step expected")
    return next((i for i, t in enumerate(timesteps) if t <= t_edit), len(timesteps) - 1)


def park_scale(sigma: float) -> float:
    """sqrt(ᾱ) = 1 / sqrt(1 + σ²): Park's x_t = park_scale · x."""
    return (1.0 + sigma ** 2) ** -0.5


def park_encoder(denoiser: Any, sigma: float) -> BatchFunction:
    """The encoder x_t -> h in Park's units (x_t = sqrt(ᾱ)·x), with the denoiser's own (edit) conditioning.

    Its singular values are Park's: those of ``encoder_function`` (∂h/∂x) times sqrt(1 + σ²).
    """
    scale = park_scale(sigma)
    return lambda z: denoiser.encode(z / scale, sigma)


def guide(denoiser: Any, x: torch.Tensor, v: torch.Tensor, sigma: float, strength: float, steps: int,
          step_size: float = 1.0) -> torch.Tensor:
    """Park's x-space guidance from a k-diffusion x: x_t = sqrt(ᾱ)·x moves by λ[ε(x_t + s·v) − ε(x_t)] per
    iteration (λ, s in x_t units), and the result comes back as a k-diffusion x. ``v`` is a unit vector."""
    scale = park_scale(sigma)
    guided = x_space_guidance(lambda z: denoiser.eps(z / scale, sigma), x * scale, v, step_size=step_size,
                              strength=strength, num_iters=steps)
    return guided[-1] / scale


def denoiser_runner(denoiser: Any) -> Runner:
    """``run`` for a k-diffusion denoiser of the library (e.g. a ``DiffusersDenoiser`` holding the source prompt):
    the output is the sampler's final x."""
    def run(fn: Callable[..., Any], start: torch.Tensor | None, sigmas: torch.Tensor,
            options: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        if start is None:
            raise HSpaceError("the library's runner needs the start x (noise times sigmas[0], or an inversion's x_T)")
        value = fn(denoiser, start, sigmas, disable=True, **options)
        return (value[0] if isinstance(value, tuple) else value), value

    return run


@dataclass
class PullbackEditResult:
    """The finish's output (what ``run`` returned), the basis at the edit step, that step and its timestep, and
    the unedited run's output."""

    output: Any
    basis: PullbackBasis
    step: int
    timestep: float
    unedited: Any


def pullback_edit(run: Runner, edit_denoiser: Any, sigmas: torch.Tensor, timesteps: Sequence[float],
                  t_edit: float, sigma_boost: float, start: torch.Tensor | None = None, num_vectors: int = 2,
                  component: int = 0, sign: float = 1.0, guidance_strength: float = 0.1,
                  guidance_steps: int = PARK_GUIDANCE_STEPS, max_iter: int = 50, seed: int = 0,
                  eta: float = 0.0, noises: Sequence[torch.Tensor] | None = None,
                  callback: Callback | None = None) -> PullbackEditResult:
    """Park's recipe (module docstring): ``run`` samples with the source conditioning, ``edit_denoiser``
    (``encode`` and ``eps``, autograd-capable) carries the edit conditioning.

    Args:
        sigmas: the generation schedule; timesteps: the model timesteps of ``sigmas[:-1]``.
        sigma_boost: η = 1 below it in the finish (0 = off; see :func:`park_t_boost`).
        start: x at sigmas[0] (an inversion's x_T), or None for the runner's seed noise.
        eta, noises: an edit-friendly (η > 0) inversion record, continued from the edit step.
        callback: the basis computation's per-iteration callback.
    """
    if component >= num_vectors:
        raise HSpaceError(f"component {component} needs a basis of more than {num_vectors} vectors")
    if len(timesteps) != len(sigmas) - 1:
        raise HSpaceError(f"one timestep per step expected: {len(sigmas) - 1} steps, {len(timesteps)} timesteps")
    options: dict[str, Any] = {} if noises is None else {"eta": eta, "noises": noises}
    unedited, (_, xs) = run(ddim_recording_x, start, sigmas, options)
    step = step_at(timesteps, t_edit)
    sigma = float(sigmas[step])
    x = xs[step, :1]
    with torch.enable_grad():
        basis = pullback_basis(park_encoder(edit_denoiser, sigma), x[0].detach(), num_vectors, max_iter=max_iter,
                               callback=callback)
    edited = guide(edit_denoiser, x[0], basis.x_basis[component] * math.copysign(1.0, sign), sigma,
                   guidance_strength, guidance_steps)
    finish = {"mode": "symmetric", "sigma_edit": float(sigmas[0]) * 2, "sigma_boost": sigma_boost,
              "eta_boost": 1.0, "seed": seed}
    if noises is not None:  # an edit-friendly record's noise terms continue from the edit step
        finish.update(eta=eta, eta_boost=eta, noises=list(noises)[step:])
    output, _ = run(sample_asyrp, edited.detach().unsqueeze(0), sigmas[step:], finish)
    return PullbackEditResult(output, basis, step, float(timesteps[step]), unedited)
