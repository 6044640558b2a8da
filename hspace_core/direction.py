"""The data model: directions in h-space, captured trajectories, model fingerprints."""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from . import __version__
from .checks import check_delta, check_finite, check_timesteps
from .errors import HSpaceError
from .sites import MID_BLOCK as HOOK_SITE, site_rank

DEFAULT_REFERENCE_STEPS = 20  # the step count of hspace's pipeline, its demo and ComfyUI's KSampler


def step_scale(reference_steps: int | None, num_steps: int | None, asymmetric: bool) -> float:
    """The factor on a shift learned or calibrated for ``reference_steps`` steps, at each step of a run of
    ``num_steps`` steps, so that an edit's total effect does not depend on the step count.

    The asymmetric step (Asyrp) adds the x0 shift of every edited step to x in full, so the effect grows with
    the number of edited steps: Asyrp scales Delta h (and f_t's output) by N_train / N_test, here
    ``reference_steps / num_steps``. A symmetric step (the shift in both terms, every plain sampler on a patched
    model) adds the x0 shift times (1 - sigma_next / sigma), a sum over the schedule that converges as the steps
    get finer, so it takes no factor (measured on the embedded model: 20, 40, 100 steps give effects 1.33, 1.14,
    1.06; the asymmetric step unscaled 4.2, 6.3, 14.9). Without a reference or a step count: no factor.
    """
    if not asymmetric or not num_steps or not reference_steps:
        return 1.0
    return reference_steps / num_steps


def model_fingerprint(module: torch.nn.Module, arch: str, h_shape: Sequence[int]) -> dict[str, Any]:
    """Identify a network cheaply: its architecture id, the h shape and a hash of a sample of its weights.

    The hash covers every parameter's name and shape and the first 256 values of up to 32 parameters
    spread over the state dict, so two checkpoints of one architecture differ while hashing stays fast
    for a 3 GB UNet.
    """
    digest = hashlib.sha256()
    items = list(module.state_dict().items())
    sampled = set(range(0, len(items), max(1, len(items) // 32)))
    for i, (name, tensor) in enumerate(items):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        if i in sampled and tensor.numel():
            digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return {"arch": arch, "h_shape": [int(s) for s in h_shape], "weights": digest.hexdigest()[:16]}


# What hspace's ComfyUI nodes recorded as the architecture of a pixel DDPM before they used the library's
# fingerprint of the diffusers UNet inside it.
LEGACY_PIXEL_ARCH = "PixelDDPM"


def check_fingerprint(mine: dict[str, Any] | None, model: dict[str, Any] | None, what: str,
                      allow_foreign: bool = False) -> None:
    """Refuse something made for another model (architecture or weights differ) unless allowed or unknown, and
    always something made at another hook site (a fingerprint without a site is a UNet's middle block's)."""
    if mine is None or model is None:
        return
    check_site(mine.get("site", HOOK_SITE), model, what)
    if allow_foreign:
        return
    for key in ("arch", "weights"):
        if mine.get(key) != model.get(key):
            if mine.get("arch") == LEGACY_PIXEL_ARCH:
                raise HSpaceError(f"{what} was made by an earlier hspace's ComfyUI nodes on a pixel model, whose "
                                  "fingerprint was ComfyUI's wrapper's and cannot be compared with this one: if it "
                                  "was made on this model, allow foreign ones to apply it (and save it again)")
            raise HSpaceError(f"{what} was made for another model ({key} {mine.get(key)!r}, this model "
                              f"{model.get(key)!r}); allow foreign ones to apply it anyway")


def check_site(site: str, model: dict[str, Any], what: str) -> None:
    """Refuse something made at another hook site than the one a model fingerprint names."""
    if site != model.get("site", HOOK_SITE):
        raise HSpaceError(f"{what} was made at the hook site {site!r} but this model is hooked at "
                          f"{model.get('site', HOOK_SITE)!r}: capture and edit at the same site")


def recorded_site(meta: dict[str, Any]) -> str | None:
    """The hook site a direction's or trajectory's meta names: its ``hook_site``, else its fingerprint's ``site``."""
    site = meta.get("hook_site", (meta.get("fingerprint") or {}).get("site"))
    return site if isinstance(site, str) else None


@dataclass
class Direction:
    """A shift of the bottleneck: one tensor [C,H,W] (global) or [S,C,H,W] keyed by timestep.

    Per-timestep directions are keyed by the model timestep, not by step index, so they apply under
    another step count: at timestep t the tensor of the nearest key is used. At a transformer hook site
    (``meta["hook_site"]``, or the site its ``meta["fingerprint"]`` names, :mod:`~hspace_core.sites`) the tensor
    is [tokens, dim] or [S, tokens, dim].
    """

    delta: torch.Tensor
    timesteps: tuple[float, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.delta = check_delta(torch.as_tensor(self.delta)).detach().float()
        site = recorded_site(self.meta)
        if site is not None:
            self.meta = {**self.meta, "hook_site": site}
        rank = self.rank
        if self.delta.ndim not in (rank, rank + 1):
            axes = "C,H,W" if rank == 3 else "tokens,dim"
            raise HSpaceError(f"a direction of shape [{axes}] or [S,{axes}] expected, got {tuple(self.delta.shape)}")
        check_finite(self.delta, "the direction")
        if self.delta.ndim == rank + 1:
            if self.timesteps is None or len(self.timesteps) != self.delta.shape[0]:
                raise HSpaceError(f"a per-timestep direction needs one timestep per slice: {self.delta.shape[0]} "
                                  f"slices, {None if self.timesteps is None else len(self.timesteps)} timesteps")
            self.timesteps = check_timesteps(self.timesteps)
        elif self.timesteps is not None:
            raise HSpaceError("a global direction [C,H,W] takes no timesteps")
        defaults = {"hook_site": HOOK_SITE, "units": "raw", "version": __version__, "default_strength": 1.0,
                    "strength_range": [-2.0, 2.0], "edit_window": None}  # window: [t_end, t_start]; None = all
        self.meta = {**defaults, **self.meta}

    @property
    def rank(self) -> int:
        """The axes of h at the direction's hook site: 3 ([C,H,W], a UNet) or 2 ([tokens, dim], a transformer)."""
        return site_rank(self.meta.get("hook_site", HOOK_SITE))

    @property
    def per_timestep(self) -> bool:
        return self.delta.ndim == self.rank + 1

    @property
    def h_shape(self) -> tuple[int, ...]:
        return tuple(self.delta.shape[-self.rank:])

    @property
    def edit_window(self) -> tuple[float, float] | None:
        """The window ``(t_end, t_start)`` of model timesteps the direction was made for (Asyrp's [t_edit, T])."""
        window = self.meta.get("edit_window")
        return None if window is None else (float(window[0]), float(window[1]))

    @property
    def reference_steps(self) -> int:
        """The number of sampling steps the direction's strength is calibrated for: Asyrp's ``n_train_steps``
        (Delta h learned per step of that grid), else, for a per-timestep direction, one step per key (the
        capture it came from), else (a global PCA, supervised or Jacobian direction) DEFAULT_REFERENCE_STEPS."""
        if self.meta.get("n_train_steps"):
            return int(self.meta["n_train_steps"])
        return len(self.timesteps) if self.per_timestep else DEFAULT_REFERENCE_STEPS

    def step_scale(self, num_steps: int | None, asymmetric: bool) -> float:
        """This direction's factor at each step of a run of ``num_steps`` steps (see :func:`step_scale`)."""
        return step_scale(self.reference_steps, num_steps, asymmetric)

    def at(self, timestep: float) -> torch.Tensor:
        """The [C,H,W] shift at a model timestep (nearest key for per-timestep directions)."""
        if not self.per_timestep:
            return self.delta
        keys = torch.tensor(self.timesteps, dtype=torch.float64)
        return self.delta[int((keys - float(timestep)).abs().argmin())]

    def with_delta(self, delta: torch.Tensor, **meta: Any) -> "Direction":
        """A direction with the same keys and metadata (updated by ``meta``) but another tensor."""
        timesteps = self.timesteps if torch.as_tensor(delta).ndim == self.rank + 1 else None
        return Direction(delta, timesteps, {**copy.deepcopy(self.meta), **meta})

    def check_model(self, fingerprint: dict[str, Any] | None, allow_foreign: bool = False) -> None:
        """Refuse a direction made for another model (shape always; architecture/weights unless allowed)."""
        if fingerprint is None:
            return
        check_site(self.meta.get("hook_site", HOOK_SITE), fingerprint, "this direction")
        if list(self.h_shape) != list(fingerprint["h_shape"]):
            raise HSpaceError(f"this direction has h shape {list(self.h_shape)} but the model's bottleneck is "
                              f"{list(fingerprint['h_shape'])}: it was made for another model")
        check_fingerprint(self.meta.get("fingerprint"), fingerprint, "this direction", allow_foreign)


@dataclass
class Inversion:
    """What an inversion leaves to regenerate its images: x_T (model space, sigma-scaled), the generation sigmas,
    for eta > 0 the noise terms of every step, h along the way and the inverted images themselves (``source``,
    model space), so that an edit can be shown beside its original.

    ``sample_ddim(model, x_T, sigmas, eta=eta, noises=noises)`` reproduces the inverted images.
    """

    x_T: torch.Tensor
    sigmas: torch.Tensor
    noises: list[torch.Tensor] | None
    eta: float
    trajectory: "Trajectory | None" = None
    method: str = "ddim"
    source: torch.Tensor | None = None

    def __repr__(self) -> str:  # short: ComfyUI prints node inputs in its error reports
        return (f"Inversion(method={self.method!r}, x_T={list(self.x_T.shape)}, steps={len(self.sigmas) - 1}, "
                f"eta={self.eta})")


@dataclass
class Trajectory:
    """h for N samples over S steps: ``h`` [N, S, C, H, W] (``[N, S, tokens, dim]`` at a transformer site) with the
    timesteps and sigmas of the steps."""

    h: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timesteps = torch.as_tensor(self.timesteps, dtype=torch.float64).flatten()
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).flatten()
        if self.h.ndim not in (4, 5):
            raise HSpaceError(f"a trajectory h of shape [N, S, C, H, W] (or [N, S, tokens, dim]) expected, got "
                              f"{tuple(self.h.shape)}")
        if self.h.shape[0] == 0 or self.h.shape[1] == 0:
            raise HSpaceError("the trajectory is empty: no sample or no step was captured")
        if not (self.h.shape[1] == self.timesteps.numel() == self.sigmas.numel()):
            raise HSpaceError(f"{self.h.shape[1]} steps of h but {self.timesteps.numel()} timesteps and "
                              f"{self.sigmas.numel()} sigmas")

    @property
    def num_samples(self) -> int:
        return self.h.shape[0]

    @property
    def num_steps(self) -> int:
        return self.h.shape[1]

    def __len__(self) -> int:
        return self.num_samples

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "Trajectory":
        return Trajectory(self.h[index], self.timesteps, self.sigmas, copy.deepcopy(self.meta))

    @staticmethod
    def concat(parts: Sequence["Trajectory"]) -> "Trajectory":
        if not parts:
            raise HSpaceError("no trajectories to concatenate")
        first = parts[0]
        for other in parts[1:]:
            if other.h.shape[1:] != first.h.shape[1:] or not torch.equal(other.timesteps, first.timesteps):
                raise HSpaceError("trajectories of different steps or h shapes cannot be concatenated")
        return Trajectory(torch.cat([p.h for p in parts]), first.timesteps, first.sigmas, copy.deepcopy(first.meta))
