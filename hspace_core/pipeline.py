"""A diffusers UNet ready for h-space work: generate, capture, invert, edit. The library's front door."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from .bottleneck import Bottleneck, EditSpec
from .checks import check_batch, check_number
from .denoisers import DiffusersDenoiser, load_diffusers_folder
from .direction import Direction, Inversion, Trajectory
from .errors import HSpaceError
from .samplers import invert_ddim, invert_edit_friendly, sample_asyrp, sample_ddim
from .schedule import VPSchedule, asyrp_timesteps, inversion_sigmas, leading_timesteps, window_sigmas

GRIDS = {"asyrp": asyrp_timesteps, "leading": leading_timesteps}


class HSpacePipeline:
    """Capture h, invert real images and sample with h shifted, on a diffusers UNet.

    >>> pipe = HSpacePipeline.default()                       # the embedded MNIST model
    >>> traj, images = pipe.capture(seeds=range(64), steps=20)
    """

    def __init__(self, unet: torch.nn.Module, schedule: VPSchedule, prediction_type: str = "epsilon",
                 **denoiser_kwargs):
        self.denoiser = DiffusersDenoiser(unet, schedule, prediction_type, **denoiser_kwargs)
        self.schedule = schedule
        self._fingerprint: dict | None = None

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> "HSpacePipeline":
        """A diffusers pixel-DDPM folder (:func:`~hspace_core.denoisers.load_diffusers_folder`; the DDPM default
        schedule when it has no scheduler config)."""
        unet, config = load_diffusers_folder(folder, device, default_schedule=True)
        return cls(unet, VPSchedule.from_diffusers_config(config), config.get("prediction_type", "epsilon"))

    @classmethod
    def default(cls, device: str = "cpu") -> "HSpacePipeline":
        """The small MNIST model that ships with hspace (see hspace_core/default_model/MODEL_CARD.md)."""
        from .embedded import default_model_dir

        return cls.from_pretrained(default_model_dir(), device)

    @property
    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = self.denoiser.fingerprint()
        return self._fingerprint

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self.denoiser.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return cfg.in_channels, size, size

    def _shape_check(self) -> tuple[int, tuple[int, int]]:
        """(channels, (height, width)) every image and x_T of this model must have."""
        channels, height, width = self.image_shape
        return channels, (height, width)

    def sigmas(self, steps: int, grid: str = "asyrp") -> torch.Tensor:
        """Generation sigmas (ending in 0) on Asyrp's grid or diffusers' leading DDIM grid."""
        check_number(steps, "steps", 1, integer=True)
        if grid not in GRIDS:
            raise HSpaceError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
        return self.schedule.sigmas_for(GRIDS[grid](steps))

    def noise(self, seeds: Sequence[int], sigmas: torch.Tensor) -> torch.Tensor:
        """x_T ~ N(0, I) per seed, in the k-diffusion scaling of the first sigma."""
        if not len(seeds):
            raise HSpaceError("at least one seed expected, got none")
        seeds = [check_number(s, "a seed", integer=True) for s in seeds]
        scale = float((1 + sigmas[0] ** 2).sqrt())
        z = torch.stack([torch.randn(self.image_shape, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds])
        return (z * scale).to(self.denoiser.device)

    def _batches(self, total: int, batch_size: int):
        for start in range(0, total, batch_size):
            yield slice(start, min(total, start + batch_size))

    @torch.no_grad()
    def capture(self, seeds: Sequence[int], steps: int = 20, batch_size: int = 64, grid: str = "asyrp",
                progress: Callable[[int, int], None] | None = None) -> tuple[Trajectory, torch.Tensor]:
        """Sample one image per seed with plain DDIM, recording h at every step. Returns (trajectory, images)."""
        seeds = list(seeds)
        if not seeds:
            raise HSpaceError("at least one seed expected")
        check_number(batch_size, "batch_size", 1, integer=True)
        sigmas = self.sigmas(steps, grid)
        parts, images = [], []
        for batch in self._batches(len(seeds), batch_size):
            with self.denoiser.attached(Bottleneck(capture=True)) as controller:
                images.append(sample_ddim(self.denoiser, self.noise(seeds[batch], sigmas), sigmas, disable=True))
            parts.append(controller.trajectory(meta={"seeds": seeds[batch], "fingerprint": self.fingerprint}))
            if progress:
                progress(batch.stop, len(seeds))
        trajectory = Trajectory.concat(parts)
        trajectory.meta["seeds"] = seeds
        return trajectory, torch.cat(images)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, steps: int = 20, method: str = "ddim", grid: str = "asyrp",
               seed: int = 0, capture: bool = True, progress: bool = False) -> Inversion:
        """DDIM inversion (deterministic; h captured along the way) or exact edit-friendly DDPM inversion."""
        if method not in ("ddim", "edit_friendly"):
            raise HSpaceError(f"method must be 'ddim' or 'edit_friendly', got {method!r}")
        check_batch(images, "the images to invert", *self._shape_check(), value_range=(-1.0, 1.0))
        sigmas = self.sigmas(steps, grid)
        images = images.to(self.denoiser.device)
        controller = Bottleneck(capture=capture)
        with self.denoiser.attached(controller):
            if method == "ddim":
                x_T = invert_ddim(self.denoiser, images, inversion_sigmas(sigmas), disable=not progress)
                noises, eta = None, 0.0
            else:
                x_T, noises = invert_edit_friendly(self.denoiser, images, sigmas, eta=1.0, seed=seed,
                                                   disable=not progress)
                eta = 1.0
        trajectory = None
        if capture:
            trajectory = controller.trajectory(meta={"source": f"{method} inversion",
                                                     "fingerprint": self.fingerprint})
            if method == "ddim":  # recorded along increasing sigmas: store in generation order
                trajectory = Trajectory(trajectory.h.flip(1), trajectory.timesteps.flip(0),
                                        trajectory.sigmas.flip(0), trajectory.meta)
        return Inversion(x_T, sigmas, noises, eta, trajectory, method)

    @torch.no_grad()
    def edit(self, x_T: torch.Tensor, sigmas: torch.Tensor, edits: Sequence[EditSpec | tuple[Direction, float]] = (),
             t_edit: float | None = None, t_boost: float = 0.0, mode: str = "asymmetric", eta: float = 0.0,
             noises: Sequence[torch.Tensor] | None = None, seed: int | None = None, allow_foreign: bool = False,
             progress: bool = False) -> torch.Tensor:
        """Sample from x_T with h shifted by the edits (Asyrp's process; quality boosting below ``t_boost``).

        ``edits`` are (direction, strength) pairs or :class:`EditSpec` (which may name the samples it edits).
        Each direction shifts h in its own edit window (``meta["edit_window"]``, Asyrp's [t_edit, T]; all steps
        when it has none) unless ``t_edit`` is given: then every edit acts on the steps with t >= t_edit. The
        shift is normalised to the step count (:meth:`~hspace_core.direction.Direction.step_scale`).
        ``noises`` (from an edit-friendly inversion or :func:`~hspace_core.samplers.ddpm_noises`) fixes the
        stochastic terms; without edits this reproduces the plain run.
        """
        check_batch(x_T, "x_T", *self._shape_check())
        check_number(eta, "eta", 0.0, 1.0)
        if noises is not None and (len(noises) != len(sigmas) - 1 or any(n.shape != x_T.shape for n in noises)):
            raise HSpaceError(f"one noise term of shape {list(x_T.shape)} per step expected ({len(sigmas) - 1} steps), "
                              f"got {len(noises)} of shapes {sorted({tuple(n.shape) for n in noises})}")
        edits = [e if isinstance(e, EditSpec) else EditSpec(*e) for e in edits]
        for edit in edits:
            edit.direction.check_model(self.fingerprint, allow_foreign)
        sigma_edit, sigma_boost = window_sigmas(self.schedule, sigmas, t_edit or 0.0, t_boost)
        if not edits:  # no batched shifted/unshifted calls: bitwise the plain run
            sigma_edit = float("inf")
        window = None if t_edit is None else (float(t_edit), float(self.schedule.num_train_timesteps - 1))
        controller = Bottleneck(edits, window=window)
        with self.denoiser.attached(controller):
            return sample_asyrp(self.denoiser, x_T.to(self.denoiser.device), sigmas, mode=mode,
                                sigma_edit=sigma_edit, sigma_boost=sigma_boost, eta=eta, noises=noises, seed=seed,
                                disable=not progress,
                                shifts=lambda s: controller.shifts_at(float(self.schedule.timestep(s))))
