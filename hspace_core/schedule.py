"""Noise schedules, the two forms of the noisy sample, and the timestep grids of the papers.

A VP model sees ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (``a_t`` = alpha_bar). In the k-diffusion form
used everywhere in hspace, ``x = x_t / sqrt(a_t) = x0 + sigma_t eps`` with ``sigma_t = sqrt((1 - a_t) / a_t)``
(:data:`VE`). A rectified-flow model (SD3, Flux; ComfyUI's CONST) sees ``x = (1 - sigma) x0 + sigma eps`` with
sigma in [0, 1] (:data:`FLOW`, :class:`FlowSchedule`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .checks import check_scheduler_config
from .errors import HSpaceError


@dataclass(frozen=True)
class NoiseForm:
    """How a noisy sample is made of the clean one and the noise: ``x = a(sigma) x0 + b(sigma) eps``.

    ``"ve"``: ``a = 1, b = sigma`` (k-diffusion; every VP model after dividing by sqrt(alpha_bar)).
    ``"flow"``: ``a = 1 - sigma, b = sigma`` (rectified flow, ComfyUI's CONST model sampling).
    Both are the VP process up to a per-sigma scale ``c = sqrt(a^2 + b^2)``: ``x / c`` is ``x_t`` with
    ``alpha_bar = a^2 / c^2``, which is how DDIM's eta carries over (:meth:`ddim_coefficients`).
    """

    name: str

    def coefficients(self, sigma: float) -> tuple[float, float]:
        """(a, b) at sigma."""
        return (1.0, sigma) if self.name == "ve" else (1.0 - sigma, sigma)

    def alpha_bar(self, sigma: float) -> float:
        a, b = self.coefficients(sigma)
        return a ** 2 / (a ** 2 + b ** 2)

    def ddim_coefficients(self, sigma: float, sigma_next: float, eta: float) -> tuple[float, float, float]:
        """(a', b_down, b_up) of a DDIM step (Song et al. 2021, eq. 12): ``x' = a' x0 + b_down eps + b_up z``.

        DDIM's noise std of ``x_t`` is ``s = eta sqrt((1 - A') / (1 - A)) sqrt(1 - A / A')`` (A = alpha_bar);
        in this form it is ``b_up = c' s = a' s / sqrt(A')`` and ``b_down = sqrt(b'^2 - b_up^2)``, so ``x'`` has
        the marginal ``a' x0 + b' eps``. At sigma = 1 in the flow form (A = 0, pure noise) ``s = eta sqrt(1 - A')``.
        """
        a_next, b_next = self.coefficients(sigma_next)
        if eta == 0 or sigma_next == 0 or sigma_next >= sigma:
            return a_next, b_next, 0.0
        big_a, big_a_next = self.alpha_bar(sigma), self.alpha_bar(sigma_next)
        s = eta * math.sqrt((1 - big_a_next) / (1 - big_a)) * math.sqrt(1 - big_a / big_a_next)
        b_up = min(a_next * s / math.sqrt(big_a_next), b_next)
        return a_next, math.sqrt(b_next ** 2 - b_up ** 2), b_up


VE = NoiseForm("ve")
FLOW = NoiseForm("flow")
FORMS = {"ve": VE, "flow": FLOW}


class VPSchedule:
    """``alphas_cumprod`` of a discrete VP model (float64) with sigma <-> timestep conversion."""

    form = VE

    def __init__(self, alphas_cumprod: torch.Tensor):
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if alphas_cumprod.numel() < 2 or not torch.all((alphas_cumprod > 0) & (alphas_cumprod < 1)):
            raise HSpaceError("alphas_cumprod must hold at least 2 values strictly between 0 and 1")
        if not torch.all(alphas_cumprod[1:] < alphas_cumprod[:-1]):
            raise HSpaceError("alphas_cumprod must decrease with the timestep")
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self._log_sigmas = self.sigmas.log()

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "VPSchedule":
        return cls(torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), dim=0))

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000) -> "VPSchedule":
        """The DDPM schedule of the pixel models of all three papers."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012,
                      num_train_timesteps: int = 1000) -> "VPSchedule":
        """Stable Diffusion's schedule (betas linear in sqrt)."""
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
        return cls.from_betas(betas)

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "VPSchedule":
        """From a diffusers scheduler config (``scheduler_config.json``)."""
        check_scheduler_config(config)
        kind = config.get("beta_schedule", "linear")
        args = (config.get("beta_start", 1e-4), config.get("beta_end", 0.02), config.get("num_train_timesteps", 1000))
        if kind == "linear":
            return cls.linear(*args)
        if kind == "scaled_linear":
            return cls.scaled_linear(*args)
        if config.get("trained_betas") is not None:
            return cls.from_betas(torch.tensor(config["trained_betas"]))
        raise HSpaceError(f"beta_schedule 'linear' or 'scaled_linear' expected, got {kind!r}")

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def max_timestep(self) -> float:
        """The timestep of the noisiest state, where an edit window [t_edit, T] ends."""
        return float(self.num_train_timesteps - 1)

    def sigma(self, timestep: torch.Tensor | float) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep, log-linear between integer timesteps."""
        t = torch.as_tensor(timestep, dtype=torch.float64).clamp(0, self.num_train_timesteps - 1)
        low = t.floor().long()
        high = (low + 1).clamp(max=self.num_train_timesteps - 1)
        w = t - low
        return ((1 - w) * self._log_sigmas[low] + w * self._log_sigmas[high]).exp()

    def timestep(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The (fractional) timestep of a sigma, the inverse of :meth:`sigma` inside the schedule's range."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp(min=1e-12).log()
        idx = torch.searchsorted(self._log_sigmas, log_sigma.contiguous()).clamp(1, self.num_train_timesteps - 1)
        low, high = self._log_sigmas[idx - 1], self._log_sigmas[idx]
        w = ((log_sigma - low) / (high - low)).clamp(0, 1)
        return idx - 1 + w

    def alpha_bar(self, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return 1 / (1 + sigma ** 2)

    def sigmas_for(self, timesteps: Sequence[int]) -> torch.Tensor:
        """Generation sigmas for descending timesteps, ending in 0 (alpha_bar = 1, the clean image)."""
        timesteps = [int(t) for t in timesteps]
        if not timesteps:
            raise HSpaceError("at least one timestep expected, got an empty list")
        if any(t < 0 or t >= self.num_train_timesteps for t in timesteps):
            raise HSpaceError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {timesteps}")
        if any(b >= a for a, b in zip(timesteps, timesteps[1:])):
            raise HSpaceError(f"timesteps must strictly decrease, got {timesteps}")
        return torch.cat([self.sigmas[timesteps], torch.zeros(1, dtype=torch.float64)])




class FlowSchedule:
    """A rectified-flow model's sigmas (``x = (1 - sigma) x0 + sigma eps``, sigma in [0, 1]) and timesteps.

    The model timestep is ``multiplier * sigma`` (ComfyUI's CONST: 1000 for SD3 and the DiTs; Flux's own
    forward takes sigma and scales it by 1000 inside, so hspace's timesteps are 1000 sigma for every family).
    ``shift`` bends the grid towards high noise, ``sigma = shift t / (1 + (shift - 1) t)`` (SD3's shift 3;
    Flux's resolution-dependent ``mu`` is ``shift = exp(mu)``); it shapes only :meth:`sigmas`, so
    :meth:`sigma` and :meth:`timestep` stay inverse to each other.
    """

    form = FLOW

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0):
        if not (math.isfinite(shift) and shift > 0):
            raise HSpaceError(f"the flow schedule's shift must be a positive number, got {shift}")
        self.shift, self.multiplier = float(shift), float(multiplier)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.multiplier)

    @property
    def max_timestep(self) -> float:
        """The timestep of pure noise (sigma = 1), where an edit window [t_edit, T] ends."""
        return self.multiplier

    def sigma(self, timestep: torch.Tensor | float) -> torch.Tensor:
        return (torch.as_tensor(timestep, dtype=torch.float64) / self.multiplier).clamp(0, 1)

    def timestep(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64) * self.multiplier

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """``num_steps`` generation steps from 1 (pure noise) to 0: the shifted uniform grid."""
        if num_steps < 1:
            raise HSpaceError(f"at least one sampling step expected, got {num_steps}")
        return self.shifted(torch.linspace(1, 0, num_steps + 1, dtype=torch.float64))


def asyrp_timesteps(num_steps: int, t0: int = 999) -> list[int]:
    """Asyrp's grid ``[int(s + 1e-6) for s in linspace(0, 1, N) * t0]``, returned descending (999 ... 0)."""
    if num_steps < 2 or num_steps > t0 + 1:
        raise HSpaceError(f"the Asyrp grid over timesteps 0..{t0} needs 2 to {t0 + 1} steps, got {num_steps}")
    grid = [int(s + 1e-6) for s in (torch.linspace(0, 1, num_steps, dtype=torch.float64) * t0).tolist()]
    return grid[::-1]


def leading_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """diffusers' DDIM "leading" grid, e.g. N=10 -> 900, 800, ..., 0 (Haas et al.)."""
    if num_steps < 1 or num_steps > num_train_timesteps:
        raise HSpaceError(f"num_steps must lie in [1, {num_train_timesteps}], got {num_steps}")
    step = num_train_timesteps // num_steps
    return [i * step for i in range(num_steps)][::-1]


def inversion_sigmas(generation_sigmas: torch.Tensor) -> torch.Tensor:
    """The increasing grid that inverts a generation grid with the same (sigma, sigma_next) pairs.

    Generation ``[s_N, ..., s_1, 0]`` is inverted along ``[s_1, ..., s_N]``: the input image counts as x
    at ``s_1`` (Asyrp's convention: the image is x at the smallest timestep), and the generation step
    ``s_1 -> 0`` has no inverse.
    """
    sigmas = check_sigmas(generation_sigmas)
    if sigmas[-1] != 0:
        raise HSpaceError("generation sigmas ending in 0 expected")
    if sigmas.numel() < 3:
        raise HSpaceError(f"at least 2 noisy sigmas expected for an inversion, got {sigmas.tolist()}")
    return sigmas[:-1].flip(0)


def check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A 1-D, finite, non-negative, strictly monotone schedule of at least two values."""
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise HSpaceError(f"a 1-D sigma schedule of at least 2 values expected, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
        raise HSpaceError(f"finite, non-negative sigmas expected, got {sigmas.tolist()}")
    diffs = sigmas[1:] - sigmas[:-1]
    if not ((diffs < 0).all() or (diffs > 0).all()):
        raise HSpaceError(f"a strictly monotone sigma schedule expected, got {sigmas.tolist()}")
    return sigmas


def at_or_above(sigma: float, edge: float) -> bool:
    """Whether a step at ``sigma`` lies in a window that reaches down to ``edge`` (the edit window [T, t_edit] as
    sigma >= sigma_edit; a step below the boost edge is boosted), allowing for float round-off at the edge."""
    return float(sigma) >= float(edge) * (1 - 1e-6)


def in_timestep_window(timestep: float, window: tuple[float, float] | None) -> bool:
    """Whether a model timestep lies in ``window = (t_end, t_start)``; None is every timestep."""
    if window is None:
        return True
    t_end, t_start = window
    return t_end - 1e-3 <= timestep <= t_start + 1e-3


def window_sigmas(schedule: VPSchedule | FlowSchedule, sigmas: torch.Tensor, t_edit: float,
                  t_boost: float = 0.0) -> tuple[float, float]:
    """(sigma_edit, sigma_boost) for an edit window [T, t_edit] and quality boosting below t_boost.

    Refuses timesteps outside the model's range, t_boost > t_edit, and a window no step of the grid falls in.
    """
    last = schedule.num_train_timesteps - 1
    for name, t in (("t_edit", t_edit), ("t_boost", t_boost)):
        if not 0 <= t <= last:
            raise HSpaceError(f"{name} must lie in [0, {last}] (the model's timesteps), got {t}")
    if t_boost > t_edit:
        raise HSpaceError(f"t_boost ({t_boost}) must not exceed t_edit ({t_edit}): no step would be edited")
    sigmas = check_sigmas(sigmas)
    sigma_edit = float(schedule.sigma(t_edit))
    if not at_or_above(sigmas[:-1].max(), sigma_edit):
        top = float(schedule.timestep(sigmas[:-1].max()))
        raise HSpaceError(f"the edit window [T, t_edit={t_edit}] lies outside this schedule, whose first step is "
                          f"at t={top:.0f}")
    return sigma_edit, (float(schedule.sigma(t_boost)) if t_boost > 0 else 0.0)
