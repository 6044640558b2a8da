"""Asyrp's learned direction (Kwon et al. 2023): train f_t with the directional CLIP loss, average it into Δh."""
from __future__ import annotations

from typing import Any

from ..hspace_core.checks import check_number
from ..hspace_core.denoisers import DiffusersDenoiser
from ..hspace_core.discovery.asyrp import DeltaBlock, DirectionalCLIPLoss, global_delta_h, load_clip, train_delta_block
from ..hspace_core.errors import HSpaceError

from . import _inputs, _sampling, comfy_adapter
from ._denoisers import autograd_denoiser
from ._types import DIRECTION, DirectionSet, NoiseRecord

CATEGORY = "hspace/discovery"


class HSpaceAsyrpTrain:
    """Asyrp (Kwon et al. 2023): train the implicit function f_t (a small block on h) with the directional CLIP loss
    from source_text to target_text on DDIM-inverted images, then average its output into a global direction for
    Apply Direction + Asyrp Sampler. Pixel DDPMs (diffusers UNets) only; needs transformers and local CLIP weights."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("direction", "log")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model("a pixel DDPM from the hspace loader (f_t uses its time embedding)"),
                "noise": _inputs.noise_record("Invert Image (ddim) of the training images: x_T and the grid"),
                "source_text": ("STRING", {"default": "a digit", "tooltip": "what the images show now"}),
                "target_text": ("STRING", {"default": "a bold digit", "tooltip": "what they should show"}),
                "clip_model": ("STRING", {"default": "openai/clip-vit-base-patch16",
                                          "tooltip": "a local CLIP folder or an already cached model name "
                                                     "(nothing is downloaded)"}),
                "t_edit": _inputs.timestep(500, "train and edit at timesteps >= t_edit"),
                "epochs": ("INT", {"default": 1, "min": 1, "max": 100, "tooltip": "passes over the images"}),
                "lr": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.01,
                                 "tooltip": "SGD learning rate (Asyrp: 0.5)"}),
                "lambda_l1": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                        "tooltip": "weight of the L1 term that keeps the rest of the image"}),
                "per_timestep": ("BOOLEAN", {"default": False, "tooltip": "keep one delta h per edited timestep "
                                                                          "instead of their mean"}),
            },
            "hidden": _inputs.HIDDEN,
        }

    def train(self, model: Any, noise: NoiseRecord, source_text: str, target_text: str, clip_model: str,
              t_edit: int, epochs: int, lr: float, lambda_l1: float, per_timestep: bool,
              unique_id: str | None = None) -> tuple[DirectionSet, str]:
        check_number(epochs, "epochs", 1, integer=True)
        check_number(lr, "lr", 0.0)
        check_number(lambda_l1, "lambda_l1", 0.0)
        _sampling.check_timestep(model, t_edit, "t_edit")
        denoiser = autograd_denoiser(model)
        if not isinstance(denoiser, DiffusersDenoiser):
            raise HSpaceError("Asyrp training needs a pixel DDPM (a diffusers UNet from the hspace loader)")
        sigma_edit = float(comfy_adapter.timestep_to_sigma(model, t_edit))
        total = epochs * noise.x_T.shape[0] * (len(noise.sigmas) - 1)
        with comfy_adapter.autograd_enabled():  # CLIP and f_t built here hold ordinary (not inference) tensors
            loss = DirectionalCLIPLoss(*load_clip(clip_model), source_text, target_text)
            block = DeltaBlock.for_unet(denoiser.unet)
            x_start = comfy_adapter.grad_ready(noise.x_T)
            history = train_delta_block(denoiser, block, x_start, noise.sigmas, sigma_edit, loss, source="reference",
                                        epochs=epochs, lr=lr, lambda_l1=lambda_l1,
                                        callback=comfy_adapter.progress_callback(total, unique_id))
            direction = global_delta_h(denoiser, block, x_start, noise.sigmas, sigma_edit, per_timestep)
        direction.meta.update(source_text=source_text, target_text=target_text,
                              fingerprint=_sampling.fingerprint(model, direction.h_shape))
        log = f"{len(history)} steps, loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}"
        return [direction], log


NODE_CLASSES = (HSpaceAsyrpTrain,)
DISPLAY_NAMES = {"HSpaceAsyrpTrain": "Asyrp Train (hspace)"}
