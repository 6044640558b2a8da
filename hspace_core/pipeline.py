"""A diffusers UNet or flow-matching transformer ready for h-space work: generate, capture, invert, edit.
The library's front door."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from .bottleneck import Bottleneck, EditSpec
from .checks import check_batch, check_number
from .class_keeping import ClassKeepingModel, check_labels
from .denoisers import DiffusersDenoiser, GuidedDenoiser, load_diffusers_folder
from .direction import Direction, Inversion, Trajectory
from .errors import HSpaceError
from .samplers import invert_ddim, invert_edit_friendly, sample_asyrp, sample_ddim
from .schedule import FlowSchedule, VPSchedule, asyrp_timesteps, inversion_sigmas, leading_timesteps, window_sigmas

GRIDS = {"asyrp": asyrp_timesteps, "leading": leading_timesteps}
EMBEDDED_MODELS = ("unet", "dit")  # the names :meth:`HSpacePipeline.load` gives the shipped models


def is_embedded(model: str | Path | None) -> bool:
    """Whether ``model`` names a shipped model (None is the embedded UNet) rather than a folder."""
    return model is None or str(model) in EMBEDDED_MODELS


class HSpacePipeline:
    """Capture h, invert real images and sample with h shifted, on a diffusers UNet (VP, DDIM) or a flow-matching
    transformer (rectified flow, :class:`~hspace_core.transformer_denoisers.DiffusersTransformerDenoiser`).

    >>> pipe = HSpacePipeline.default()                       # the embedded MNIST model
    >>> traj, images = pipe.capture(seeds=range(64), steps=20)
    >>> dit = HSpacePipeline.default_dit()                    # the embedded flow-matching DiT
    """

    def __init__(self, unet: torch.nn.Module, schedule: VPSchedule, prediction_type: str = "epsilon",
                 **denoiser_kwargs):
        self._use(DiffusersDenoiser(unet, schedule, prediction_type, **denoiser_kwargs))

    def _use(self, denoiser: GuidedDenoiser) -> None:
        self.denoiser = denoiser
        self.schedule: VPSchedule | FlowSchedule = denoiser.schedule
        self._fingerprint: dict | None = None

    @classmethod
    def for_denoiser(cls, denoiser: GuidedDenoiser) -> "HSpacePipeline":
        """A pipeline on a denoiser already set up, e.g. a ``DiffusersTransformerDenoiser`` (its site, its
        conditioning and guidance)."""
        pipe = cls.__new__(cls)
        pipe._use(denoiser)
        return pipe

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

    @classmethod
    def default_dit(cls, device: str = "cpu", site: str | None = None) -> "HSpacePipeline":
        """The small flow-matching DiT that ships with hspace, sampled unconditionally (its null class), h at
        ``site`` (by default the output of its middle block, ``transformer_blocks.2.output``)."""
        from .embedded import default_dit_denoiser

        return cls.for_denoiser(default_dit_denoiser(device, site))

    @classmethod
    def load(cls, model: str | Path | None = None, device: str = "cpu") -> "HSpacePipeline":
        """``None`` or ``"unet"``: the embedded UNet; ``"dit"``: the embedded DiT; otherwise a diffusers pixel-DDPM
        folder (``./dit`` for a folder of that name)."""
        if model is None or str(model) == "unet":
            return cls.default(device)
        if str(model) == "dit":
            return cls.default_dit(device)
        return cls.from_pretrained(model, device)

    @property
    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = self.denoiser.fingerprint()
        return self._fingerprint

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.denoiser.sample_shape

    @property
    def flow(self) -> bool:
        return isinstance(self.schedule, FlowSchedule)

    def _shape_check(self) -> tuple[int, tuple[int, int]]:
        """(channels, (height, width)) every image and x_T of this model must have."""
        channels, height, width = self.image_shape
        return channels, (height, width)

    def sigmas(self, steps: int, grid: str | None = None) -> torch.Tensor:
        """Generation sigmas (ending in 0): for a UNet on Asyrp's grid (default) or diffusers' leading DDIM grid,
        for a flow model on its schedule's (shifted) uniform grid from 1 to 0 (``grid="flow"``, the only one)."""
        check_number(steps, "steps", 1, integer=True)
        if self.flow:
            if grid not in (None, "flow"):
                raise HSpaceError(f"a flow-matching model samples on grid 'flow' only, got {grid!r}")
            return self.schedule.sigmas(steps)
        grid = grid or "asyrp"
        if grid not in GRIDS:
            raise HSpaceError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
        return self.schedule.sigmas_for(GRIDS[grid](steps))

    def noise(self, seeds: Sequence[int], sigmas: torch.Tensor) -> torch.Tensor:
        """x_T ~ N(0, I) per seed, scaled to the first sigma's noise level (k-diffusion's sqrt(1 + sigma^2),
        1 for a flow model at sigma = 1)."""
        if not len(seeds):
            raise HSpaceError("at least one seed expected, got none")
        seeds = [check_number(s, "a seed", integer=True) for s in seeds]
        a, b = self.denoiser.form.coefficients(sigmas[0])
        scale = float((a ** 2 + b ** 2).sqrt())
        z = torch.stack([torch.randn(self.image_shape, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds])
        return (z * scale).to(self.denoiser.device)

    def _batches(self, total: int, batch_size: int):
        for start in range(0, total, batch_size):
            yield slice(start, min(total, start + batch_size))

    @torch.no_grad()
    def capture(self, seeds: Sequence[int], steps: int = 20, batch_size: int = 64, grid: str | None = None,
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
    def invert(self, images: torch.Tensor, steps: int = 20, method: str = "ddim", grid: str | None = None,
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
             progress: bool = False, keep_class: Callable[[torch.Tensor], torch.Tensor] | None = None,
             labels: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Sample from x_T with h shifted by the edits (Asyrp's process; quality boosting below ``t_boost``).

        ``edits`` are (direction, strength) pairs or :class:`EditSpec` (which may name the samples it edits).
        Each direction shifts h in its own edit window (``meta["edit_window"]``, Asyrp's [t_edit, T]; all steps
        when it has none) unless ``t_edit`` is given: then every edit acts on the steps with t >= t_edit. The
        shift is normalised to the step count (:meth:`~hspace_core.direction.Direction.step_scale`).
        ``noises`` (from an edit-friendly inversion or :func:`~hspace_core.samplers.ddpm_noises`) fixes the
        stochastic terms; without edits this reproduces the plain run.

        ``keep_class``: a classifier ``images -> logits [N, classes]``; each sample's shift is then corrected at every
        edited step so that the probability of its class does not fall, to first order
        (:mod:`~hspace_core.class_keeping`; asymmetric mode only). The class is ``labels`` (one per sample), else
        the classifier's class of the unedited image (one more plain run).
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
        window = None if t_edit is None else (float(t_edit), self.schedule.max_timestep)
        controller = Bottleneck(edits, window=window)
        model, attached = self.denoiser, controller
        if keep_class is not None:
            if mode != "asymmetric":
                raise HSpaceError(f"a class-keeping edit runs the asymmetric process only, got mode {mode!r}")
            if labels is None:
                plain = self.edit(x_T, sigmas, t_boost=t_boost, eta=eta, noises=noises, seed=seed)
                with torch.no_grad():
                    labels = keep_class(plain).argmax(1)
            model = ClassKeepingModel(self.denoiser, controller, keep_class, check_labels(labels, x_T.shape[0]))
            attached = Bottleneck()
        with self.denoiser.attached(attached):
            return sample_asyrp(model, x_T.to(self.denoiser.device), sigmas, mode=mode,
                                sigma_edit=sigma_edit, sigma_boost=sigma_boost, eta=eta, noises=noises, seed=seed,
                                disable=not progress,
                                shifts=lambda s: controller.shifts_at(float(self.schedule.timestep(s))))
