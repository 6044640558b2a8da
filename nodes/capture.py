"""Capture h: sample N images with DDIM and record the middle-block output at every step."""
from __future__ import annotations

import math
from typing import Any

import torch

from hspace_core.direction import Trajectory
from hspace_core.errors import HSpaceError
from hspace_core.samplers import sample_ddim

from . import _inputs, _sampling
from ._types import TRAJECTORY

CATEGORY = "hspace/capture"


class HSpaceCaptureH:
    """Sample num_samples images (in batches of the latent's batch size, seeds seed, seed+1, ...) with DDIM and
    record h, the UNet middle-block output, at every step: the data PCA and supervised directions are made from."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (TRAJECTORY, "LATENT")
    RETURN_NAMES = ("trajectory", "samples")
    FUNCTION = "capture"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model(),
                "sigmas": _inputs.sigmas(),
                "latent_image": _inputs.latent("an empty latent; its batch size is the number sampled at once"),
                "num_samples": ("INT", {"default": 64, "min": 2, "max": 100000,
                                        "tooltip": "how many images to sample and capture (PCA needs at least 2)"}),
                "seed": _inputs.seed("seed of the first batch; batch i uses seed + i"),
                "cfg": _inputs.cfg(),
                "eta": _inputs.eta(),
            },
            "optional": _inputs.optional_conditioning(),
            "hidden": _inputs.HIDDEN,
        }

    def capture(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], num_samples: int, seed: int,
                cfg: float, eta: float, positive: list | None = None, negative: list | None = None,
                unique_id: str | None = None) -> tuple[Trajectory, dict[str, Any]]:
        batch = latent_image["samples"].shape[0]
        if batch < 1:
            raise HSpaceError("the latent_image holds no sample: an empty latent with batch size >= 1 expected")
        parts, latents = [], []
        for i in range(math.ceil(num_samples / batch)):
            noise = _sampling.random_noise(latent_image, seed + i, model)
            latent, _, trajectory = _sampling.capture(
                model, sample_ddim, sigmas, latent_image, positive, negative, cfg, noise, seed + i,
                meta={"seed": seed, "eta": eta, "cfg": cfg}, node_id=unique_id,
                options={"eta": eta, "seed": seed + i + 1})
            parts.append(trajectory)
            latents.append(latent["samples"])
        trajectory = Trajectory.concat(parts).select(slice(0, num_samples))
        return trajectory, _sampling.latent_output(latent_image, torch.cat(latents)[:num_samples])


NODE_CLASSES = (HSpaceCaptureH,)
DISPLAY_NAMES = {"HSpaceCaptureH": "Capture h (hspace)"}
