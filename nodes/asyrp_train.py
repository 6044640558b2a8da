"""Asyrp's learned edit (Kwon et al. 2023): train f_t with the directional CLIP loss and average it into a global Δh
(saving f_t itself on request), and apply a saved f_t per image (Asyrp's default edit)."""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.checks import check_number
from ..hspace_core.discovery.asyrp import (CLIP_MEAN, CLIP_STD, DeltaBlock, DirectionalCLIPLoss, ImageEncoder, TextEncoder, f_t_controller,
                                         global_delta_h, load_clip, load_delta_block, projected_encoders,
                                         save_delta_block, train_delta_block)
from ..hspace_core.direction import Inversion
from ..hspace_core.errors import HSpaceError

from . import _folders, _inputs, _sampling, comfy_adapter, pixel_model
from ._denoisers import autograd_denoiser
from ._types import DIRECTION, DirectionSet

CATEGORY = "hspace/discovery"
COMFY_CLIP_FILES = ("connect Load CLIP Vision and Load CLIP (type stable_diffusion) with one CLIP's image and text "
                    "towers in one space: openai/clip-vit-large-patch14's model.safetensors (ViT-L/14, with its "
                    "text_projection) put in both models/clip_vision/ and models/text_encoders/; an SD1.5 "
                    "checkpoint's CLIP has no text_projection, so its text output is not in the image space")


VISION_FIELDS = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps")


def _differentiable_vision(clip_vision: Any, config: dict[str, Any]) -> torch.nn.Module:
    """The CLIP_VISION's weights in a transformers ``CLIPVisionModelWithProjection`` (same key names): ComfyUI's own
    forward adds residuals in place and its weights are inference tensors, so autograd cannot run through it."""
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    except ImportError as error:
        raise HSpaceError("the CLIP loss needs transformers (a ComfyUI requirement): pip install transformers") \
            from error
    with torch.inference_mode(False):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**{k: config[k] for k in VISION_FIELDS if k in config}))
        weights = {k: v.detach().float().clone() for k, v in clip_vision.get_sd().items()}
        missing, _ = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing:
        raise HSpaceError(f"the CLIP_VISION lacks {len(missing)} weights of a CLIP vision tower (e.g. {missing[0]}): "
                          f"{COMFY_CLIP_FILES}")
    return model.eval().requires_grad_(False)


def comfy_clip_encoders(clip_vision: Any, clip: Any) -> tuple[ImageEncoder, TextEncoder]:
    """Asyrp's CLIP encoders over ComfyUI's CLIP_VISION (its projected image embedding) and CLIP (its unprojected
    pooled text output times its text_projection), refused where the two spaces cannot match."""
    config = dict(getattr(clip_vision, "config", None) or {})
    if config.get("model_type", "clip_vision_model") != "clip_vision_model" or "projection_dim" not in config:
        raise HSpaceError(f"the CLIP_VISION is a {config.get('model_type', '?')} without CLIP's visual projection: "
                          f"{COMFY_CLIP_FILES}")
    encoder = getattr(clip, "cond_stage_model", None)
    text_model = getattr(encoder, str(getattr(encoder, "clip", "")), None)
    projection = getattr(getattr(text_model, "transformer", None), "text_projection", None)
    weight = getattr(projection, "weight", None)
    if weight is None:
        raise HSpaceError(f"the CLIP is no CLIP text model with a text_projection ({type(encoder).__name__}): "
                          f"{COMFY_CLIP_FILES}")
    if weight.shape[0] != int(config["projection_dim"]):
        raise HSpaceError(f"the CLIP's text_projection gives {weight.shape[0]} dims but the CLIP_VISION's image "
                          f"embedding has {config['projection_dim']}: they are not one CLIP; {COMFY_CLIP_FILES}")
    if not bool(torch.isfinite(weight).all()) or not bool(weight.abs().max() > 0):
        raise HSpaceError(f"the CLIP's text_projection holds no trained weights (not in the file it came from): "
                          f"{COMFY_CLIP_FILES}")
    vision = _differentiable_vision(clip_vision, config)

    def embed_image(pixels: torch.Tensor) -> torch.Tensor:
        return vision.to(pixels.device)(pixel_values=pixels).image_embeds

    def pooled_text(texts: list[str]) -> torch.Tensor:
        return torch.cat([clip.encode_from_tokens(clip.tokenize(text), return_pooled="unprojected")[1]
                          for text in texts])

    return projected_encoders(embed_image, int(config.get("image_size", 224)), pooled_text, weight,
                              config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD))


def _transformers_clip(clip_model: str) -> tuple[ImageEncoder, TextEncoder]:
    try:
        return load_clip(clip_model)
    except HSpaceError as error:
        raise HSpaceError(f"{error}; or {COMFY_CLIP_FILES}") from error


class HSpaceAsyrpTrain:
    """Asyrp (Kwon et al. 2023): train the implicit function f_t (a small block on h) with the directional CLIP loss
    from source_text to target_text on DDIM-inverted images, then average its output into a global direction for
    Apply Direction + Asyrp Sampler. Pixel DDPMs (diffusers UNets) only. CLIP: a CLIP_VISION and a CLIP of one CLIP
    model (e.g. ViT-L/14 with its text projection), or a transformers CLIP folder (clip_model)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("direction", "log")
    OUTPUT_TOOLTIPS = (
        "the trained edit as a global direction (f_t's mean delta h), for Apply Direction",
        "training steps and the loss at the first and last step",
    )
    SEARCH_ALIASES = ["asyrp", "clip edit", "text edit", "train direction"]
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": _inputs.model("a pixel DDPM from the hspace loader (f_t uses its time embedding)"),
                "noise": _inputs.noise_record("Invert Image (ddim) of the training images: x_T, the grid and the "
                                              "images, each the CLIP loss's source as in Asyrp's code"),
                "source_text": ("STRING", {"default": "a digit", "tooltip": "what the images show now"}),
                "target_text": ("STRING", {"default": "a bold digit", "tooltip": "what they should show"}),
                "clip_model": ("STRING", {"default": "openai/clip-vit-base-patch16",
                                          "tooltip": "a local transformers CLIP folder or an already cached model "
                                                     "name (nothing is downloaded); unused when clip_vision and "
                                                     "clip are connected"}),
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
                "clip_vision": ("CLIP_VISION", {"tooltip": "Load CLIP Vision: CLIP's image tower (e.g. ViT-L/14); "
                                                           "with clip, used instead of clip_model"}),
                "clip": ("CLIP", {"tooltip": "Load CLIP (type stable_diffusion): the same CLIP's text tower with its "
                                             "text_projection (e.g. clip-vit-large-patch14; an SD1.5 checkpoint's "
                                             "CLIP has none)"}),
            },
            "hidden": _inputs.HIDDEN,
        }

    def train(self, model: Any, noise: Inversion, source_text: str, target_text: str, clip_model: str,
              t_edit: int, epochs: int, lr: float, lambda_l1: float, per_timestep: bool, save_f_t_as: str = "",
              clip_vision: Any = None, clip: Any = None, unique_id: str | None = None) -> tuple[DirectionSet, str]:
        check_number(epochs, "epochs", 1, integer=True)
        check_number(lr, "lr", 0.0)
        check_number(lambda_l1, "lambda_l1", 0.0)
        _sampling.check_timestep(model, t_edit, "t_edit")
        if (clip_vision is None) != (clip is None):
            raise HSpaceError(f"clip_vision and clip go together (one is connected): {COMFY_CLIP_FILES}")
        pixel_unet(model)
        denoiser = autograd_denoiser(model)
        # Asyrp's code compares the edit with each input image; a record without its images (made by the
        # library or an older Invert Image) falls back to the unedited x0 of each step, the paper's formula.
        source_images = noise.source
        if source_images is not None and source_images.shape != noise.x_T.shape:
            raise HSpaceError(f"the noise record's images {list(source_images.shape)} do not match its x_T "
                              f"{list(noise.x_T.shape)}: invert the images again")
        source = "reference" if source_images is None else "image"
        sigma_edit = float(comfy_adapter.timestep_to_sigma(model, t_edit))
        total = epochs * noise.x_T.shape[0] * (len(noise.sigmas) - 1)
        with comfy_adapter.autograd_enabled():  # CLIP and f_t built here hold ordinary (not inference) tensors
            encoders = _transformers_clip(clip_model) if clip is None else comfy_clip_encoders(clip_vision, clip)
            loss = DirectionalCLIPLoss(*encoders, source_text, target_text)
            block = DeltaBlock.for_unet(denoiser.unet)
            x_start = comfy_adapter.grad_ready(noise.x_T)
            if source_images is not None:
                source_images = comfy_adapter.grad_ready(source_images)
            history = train_delta_block(denoiser, block, x_start, noise.sigmas, sigma_edit, loss, source_images,
                                        source=source, epochs=epochs, lr=lr, lambda_l1=lambda_l1,
                                        callback=comfy_adapter.progress_callback(total, unique_id))
            direction = global_delta_h(denoiser, block, x_start, noise.sigmas, sigma_edit, per_timestep)
        clip_name = clip_model if clip is None else "ComfyUI CLIP_VISION + CLIP"
        settings = {"source_text": source_text, "target_text": target_text, "clip_model": clip_name,
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


def pixel_unet(model: Any) -> torch.nn.Module:
    """The diffusers UNet of a pixel DDPM MODEL, where Asyrp's f_t is trained and run; other models are refused
    before anything is built (f_t's DeltaBlock is made for a diffusers UNet's middle block)."""
    inner = comfy_adapter.diffusion_model(model)
    if not isinstance(inner, pixel_model.DiffusersUNetWrapper):
        kind = type(comfy_adapter.base_model(model)).__name__
        raise HSpaceError(f"Asyrp's f_t is trained and run on a pixel DDPM (a diffusers UNet from the hspace loader), "
                          f"not on {kind} ({type(inner).__name__}); for other models train a global direction "
                          "(PCA, supervised, Jacobian) and sample with the Asyrp Sampler")
    return inner.unet


class HSpaceApplyAsyrpFunction:
    """Asyrp's default edit (Kwon et al. 2023): patch a MODEL so that at every step with t >= the trained t_edit
    each image's h is shifted by the trained f_t(h_t, t) of its own h (not the averaged global delta h). Sample with
    the Asyrp Sampler (asymmetric, t_edit as trained). f_t files come from Asyrp Train's save_f_t_as."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "info")
    OUTPUT_TOOLTIPS = (
        "the MODEL patched to shift each image's h by the trained f_t of its own h",
        "what f_t was trained for and the window it edits in",
    )
    SEARCH_ALIASES = ["asyrp", "f_t"]
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
        unet = pixel_unet(model)
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
