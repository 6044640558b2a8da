"""Capture h: sample N images with DDIM and record the middle-block output at every step."""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..hspace_core.checks import check_choice, check_number
from ..hspace_core.direction import Trajectory
from ..hspace_core.errors import HSpaceError
from ..hspace_core.fileio import TrajectoryWriter
from ..hspace_core.samplers import sample_ddim
from ..hspace_core.schedule import check_sigmas

from . import _comfy, _inputs, _sampling
from ._types import TRAJECTORY, TrajectoryValue

CATEGORY = "hspace/capture"
STORES = ("memory", "disk")


class _MemoryStore:
    def __init__(self) -> None:
        self.parts: list[Trajectory] = []

    def append(self, part: Trajectory) -> None:
        self.parts.append(part)

    def close(self) -> Trajectory:
        return Trajectory.concat(self.parts)

    def discard(self) -> None:
        self.parts.clear()


class _DiskStore(TrajectoryWriter):
    """Shards in a new folder ``output/<prefix>_00001_/`` (index.json + one safetensors file per batch)."""

    def __init__(self, filename_prefix: str):
        folder_paths = _comfy.require("folder_paths")
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                       folder_paths.get_output_directory())
        super().__init__(os.path.join(folder, f"{name}_{counter:05}_"))


class HSpaceCaptureH:
    """Sample num_samples images (in batches of the latent's batch size, seeds seed, seed+1, ...) with DDIM and
    record h, the UNet middle-block output (a transformer: the image tokens of the site's block), at every step:
    the data PCA and supervised directions are made from.
    Large captures can go to disk (output/<prefix>_NNNNN_/, one shard per batch), read back a shard at a time."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (TRAJECTORY, "LATENT")
    RETURN_NAMES = ("trajectory", "samples")
    OUTPUT_TOOLTIPS = (
        "h of every sample at every step, for PCA or supervised directions",
        "the sampled images' latents (decode them to see what was captured)",
    )
    SEARCH_ALIASES = ["record h", "bottleneck activations", "collect features"]
    FUNCTION = "capture"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model(),
                "sigmas": _inputs.sigmas(),
                "latent_image": _inputs.latent("an empty latent; its batch size is the number sampled at once"),
                "num_samples": ("INT", {"default": 64, "min": 2, "max": 1000000,
                                        "tooltip": "how many images to sample and capture (PCA needs at least 2)"}),
                "seed": _inputs.seed("seed of the first batch; batch i uses seed + i"),
                "cfg": _inputs.cfg(),
                "eta": _inputs.eta(0.0, "DDIM eta: 0 = deterministic (hspace's default: the captured samples are "
                                        "the plain runs that edits of the same seeds are compared with), 1 = DDPM "
                                        "(Haas et al. sample with eta = 1 for PCA; their +-5 std range is "
                                        "measured there)"),
                "store": (list(STORES), {"tooltip": "memory, or disk for captures larger than memory (streamed "
                                                    "shards that PCA reads one at a time)"}),
                "filename_prefix": ("STRING", {"default": "hspace_trajectories/capture",
                                               "tooltip": "with store = disk: the folder inside output/"}),
            },
            "optional": {**_inputs.optional_conditioning(), "site": _inputs.hook_site()},
            "hidden": _inputs.HIDDEN,
        }

    def capture(self, model: Any, sigmas: torch.Tensor, latent_image: dict[str, Any], num_samples: int, seed: int,
                cfg: float, eta: float, store: str, filename_prefix: str, positive: list | None = None,
                negative: list | None = None, site: str | None = None,
                unique_id: str | None = None) -> tuple[TrajectoryValue, dict[str, Any]]:
        check_choice(store, "store", STORES)
        check_number(num_samples, "num_samples", 1, integer=True)
        check_number(eta, "eta", 0.0, 1.0)
        batch = latent_image["samples"].shape[0]
        if batch < 1:
            raise HSpaceError("the latent_image holds no sample: an empty latent with batch size >= 1 expected")
        batches, steps = math.ceil(num_samples / batch), len(check_sigmas(sigmas)) - 1
        previews = _comfy.preview_callback(model, batches * steps)
        sink = _DiskStore(filename_prefix) if store == "disk" else _MemoryStore()
        latents = []
        try:
            for i in range(batches):
                progress = _comfy.offset_callback(previews, i * steps, batches * steps)
                latent, _, trajectory = _sampling.capture(
                    model, sample_ddim, sigmas, latent_image, positive, negative, cfg,
                    _sampling.random_noise(latent_image, seed + i, model), seed + i,
                    meta={"seed": seed, "eta": eta, "cfg": cfg}, options={"eta": eta, "seed": seed + i + 1},
                    progress=progress, hook_site=site)
                sink.append(trajectory.select(slice(0, num_samples - i * batch)))
                latents.append(latent["samples"])
            captured = sink.close()
        except BaseException:
            sink.discard()
            raise
        return captured, _sampling.latent_output(latent_image, torch.cat(latents)[:num_samples])


NODE_CLASSES = (HSpaceCaptureH,)
DISPLAY_NAMES = {"HSpaceCaptureH": "Capture h (hspace)"}
