"""Asyrp's learned edit (Kwon et al. 2023): train f_t with the directional CLIP loss and average it into a global Δh
(saving f_t itself on request), and apply a saved f_t per image (Asyrp's default edit)."""
from __future__ import annotations

from typing import Any

from ..hspace_core.checks import check_number
from ..hspace_core.denoisers import DiffusersDenoiser
from ..hspace_core.discovery.asyrp import (DeltaBlock, DirectionalCLIPLoss, f_t_controller, global_delta_h, load_clip,
                                         load_delta_block, save_delta_block, train_delta_block)
from ..hspace_core.direction import Inversion
from ..hspace_core.errors import HSpaceError

from . import _folders, _inputs, _sampling, comfy_adapter
from ._denoisers import autograd_denoiser
from .pixel_latents import image_to_latent
from ._types import DIRECTION, DirectionSet

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
                "save_f_t_as": ("STRING", {"default": "", "tooltip": "also save the trained f_t under this name in "
                                                                      "models/hspace_directions, for Apply Asyrp f_t "
                                                                      "(Asyrp's per-image edit); empty = don't"}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": (
                    "the images that were inverted, in the noise record's order: the CLIP loss's source is then "
                    "each input image, as in Asyrp's official code. Unconnected: the unedited trajectory's "
                    "predicted x0 at each step (the paper's formula), since a noise record holds no images")}),
            },
            "hidden": _inputs.HIDDEN,
        }

    def train(self, model: Any, noise: Inversion, source_text: str, target_text: str, clip_model: str,
              t_edit: int, epochs: int, lr: float, lambda_l1: float, per_timestep: bool, save_f_t_as: str = "",
              images: Any = None, unique_id: str | None = None) -> tuple[DirectionSet, str]:
        check_number(epochs, "epochs", 1, integer=True)
        check_number(lr, "lr", 0.0)
        check_number(lambda_l1, "lambda_l1", 0.0)
        _sampling.check_timestep(model, t_edit, "t_edit")
        denoiser = autograd_denoiser(model)
        if not isinstance(denoiser, DiffusersDenoiser):
            raise HSpaceError("Asyrp training needs a pixel DDPM (a diffusers UNet from the hspace loader)")
        source, source_images = "reference", None
        if images is not None:
            source_images = image_to_latent(images, noise.x_T.shape[1])
            if source_images.shape != noise.x_T.shape:
                raise HSpaceError(f"images of shape {list(source_images.shape)} (as pixel latents) do not match the "
                                  f"noise record's {list(noise.x_T.shape)}: connect the images Invert Image inverted")
            source = "image"
        sigma_edit = float(comfy_adapter.timestep_to_sigma(model, t_edit))
        total = epochs * noise.x_T.shape[0] * (len(noise.sigmas) - 1)
        with comfy_adapter.autograd_enabled():  # CLIP and f_t built here hold ordinary (not inference) tensors
            loss = DirectionalCLIPLoss(*load_clip(clip_model), source_text, target_text)
            block = DeltaBlock.for_unet(denoiser.unet)
            x_start = comfy_adapter.grad_ready(noise.x_T)
            if source_images is not None:
                source_images = comfy_adapter.grad_ready(source_images)
            history = train_delta_block(denoiser, block, x_start, noise.sigmas, sigma_edit, loss, source_images,
                                        source=source, epochs=epochs, lr=lr, lambda_l1=lambda_l1,
                                        callback=comfy_adapter.progress_callback(total, unique_id))
            direction = global_delta_h(denoiser, block, x_start, noise.sigmas, sigma_edit, per_timestep)
        settings = {"source_text": source_text, "target_text": target_text, "clip_model": clip_model,
                    "t_edit": t_edit, "epochs": epochs, "lr": lr, "lambda_l1": lambda_l1, "source": source}
        direction.meta.update(settings, fingerprint=_sampling.fingerprint(model, direction.h_shape))
        log = f"{len(history)} steps, loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}"
        if save_f_t_as.strip():
            keep = {k: direction.meta[k] for k in ("n_train_steps", "edit_window", "edit_window_sigma")
                    if k in direction.meta}
            path = save_delta_block(block, _folders.save_path(save_f_t_as, overwrite=False),
                                    {**settings, **keep, "fingerprint": direction.meta["fingerprint"]})
            log += f"; f_t saved as {path.name}"
        return [direction], log


class HSpaceApplyAsyrpFunction:
    """Asyrp's default edit (Kwon et al. 2023): patch a MODEL so that at every step with t >= the trained t_edit
    each image's h is shifted by the trained f_t(h_t, t) of its own h (not the averaged global delta h). Sample with
    the Asyrp Sampler (asymmetric, t_edit as trained). f_t files come from Asyrp Train's save_f_t_as."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "info")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": _inputs.model("the pixel DDPM f_t was trained on"),
            "f_t_name": (_folders.list_names(), {"tooltip": "an f_t file saved by Asyrp Train (save_f_t_as)"}),
            "strength": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.05,
                                   "tooltip": "multiplies f_t's delta h (1 = as trained; scaled by N_train / N_test "
                                              "steps as in Asyrp, so the edit is as strong at any step count)"}),
            "t_edit": ("INT", {"default": -1, "min": -1, "max": 999, "tooltip": (
                "edit at timesteps >= t_edit; -1 = the t_edit it was trained with (model timestep)")}),
            "allow_foreign": ("BOOLEAN", {"default": False, "tooltip": "apply an f_t trained on another model "
                                                                         "(same h shape) instead of refusing it"}),
        }}

    def apply(self, model: Any, f_t_name: str, strength: float, t_edit: int,
              allow_foreign: bool) -> tuple[Any, str]:
        inner = comfy_adapter.check_unet(model)
        unet = getattr(inner, "unet", None)
        if unet is None:
            raise HSpaceError("Asyrp's f_t runs on a pixel DDPM (a diffusers UNet from the hspace loader)")
        with comfy_adapter.autograd_enabled():
            block, meta = load_delta_block(_folders.resolve(f_t_name), unet, _sampling.fingerprint(model, ()),
                                           allow_foreign)
        t_edit = int(meta.get("t_edit", 0)) if t_edit < 0 else t_edit
        schedule = comfy_adapter.vp_schedule(model)
        n_train_steps = meta.get("n_train_steps")
        controller = f_t_controller(block, unet, t_edit, schedule.num_train_timesteps, strength,
                                    n_train_steps=int(n_train_steps) if n_train_steps else None)
        info = (f"f_t {meta.get('source_text', '?')!r} -> {meta.get('target_text', '?')!r}, t >= {t_edit}, "
                f"trained with {meta.get('n_train_steps', '?')} steps")
        return comfy_adapter.patch_model(model, controller), info


NODE_CLASSES = (HSpaceAsyrpTrain, HSpaceApplyAsyrpFunction)
DISPLAY_NAMES = {"HSpaceAsyrpTrain": "Asyrp Train (hspace)", "HSpaceApplyAsyrpFunction": "Apply Asyrp f_t (hspace)"}
