"""Pixel-space DDPMs (diffusers ``UNet2DModel``) as ordinary ComfyUI MODELs.

The diffusers UNet sits inside a ``comfy.model_base.BaseModel`` subclass, wrapped by a module that calls it the
way ComfyUI calls a diffusion model (``x_t``, timesteps, transformer_options) and runs the
``middle_block_after_patch`` list from a forward hook on ``unet.mid_block`` for the duration of each call. The
schedule is a ``ModelSamplingDiscrete`` built from the diffusers scheduler config (linear betas 1e-4..0.02 are
ComfyUI's "sqrt_linear"), EPS or V_PREDICTION. The latent format is pixel space (downscale 1, scale 1), so
KSampler / SamplerCustom sample in [-1, 1] pixel units; ``HSpacePixelLatentToImage`` turns the result into an
IMAGE without a VAE (EmptyLatentImage works too: ComfyUI resizes its empty latent to downscale ratio 1).

ComfyUI is imported only inside functions; the ComfyUI classes are built on first use.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch

from ..hspace_core.checks import (check_batch, check_loading_info, check_pixel_unet_config, check_unet_folder, one_line,
                                read_json)
from ..hspace_core.errors import HSpaceError

from . import _comfy
from ._display import enlarged

EMBEDDED = "hspace-mnist-16 (embedded)"
COMFY_BETA_SCHEDULES = {"linear": "sqrt_linear", "scaled_linear": "linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}
PIXEL_CATEGORY = "hspace/pixel"


class DiffusersUNetWrapper(torch.nn.Module):
    """A diffusers ``UNet2DModel`` called like a ComfyUI diffusion model, honouring the middle-block patch."""

    calls_middle_block_after_patch = True

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    @property
    def middle_block(self) -> torch.nn.Module | None:
        return getattr(self.unet, "mid_block", None)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, y: Any = None,
                control: Any = None, transformer_options: dict[str, Any] | None = None, **kwargs: Any) -> torch.Tensor:
        check_batch(x, "the pixel model's input", channels=int(self.unet.config.in_channels))
        options = dict(transformer_options or {})
        patches = (options.get("patches") or {}).get("middle_block_after_patch") or []
        handle = None
        if patches:
            def hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
                h = output[0] if isinstance(output, tuple) else output
                call_options = {**options, "block": ("middle", 0)}
                for patch in patches:
                    h = patch({"h": h, "x": x, "emb": None, "context": context, "y": y, "timesteps": timesteps,
                               "transformer_options": call_options})["h"]
                return (h, *output[1:]) if isinstance(output, tuple) else h

            handle = self.unet.mid_block.register_forward_hook(hook)
        try:
            return self.unet(x, timesteps.to(x.device), return_dict=False)[0]
        finally:
            if handle is not None:
                handle.remove()


def comfy_sampling_settings(scheduler_config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """ComfyUI ``sampling_settings`` and the ModelType name for a diffusers scheduler config."""
    schedule = scheduler_config.get("beta_schedule", "linear")
    if schedule not in COMFY_BETA_SCHEDULES or scheduler_config.get("trained_betas") is not None:
        raise HSpaceError(f"beta_schedule one of {sorted(COMFY_BETA_SCHEDULES)} expected, got {schedule!r}")
    prediction = scheduler_config.get("prediction_type", "epsilon")
    model_types = {"epsilon": "EPS", "v_prediction": "V_PREDICTION"}
    if prediction not in model_types:
        raise HSpaceError(f"prediction_type 'epsilon' or 'v_prediction' expected, got {prediction!r}")
    settings = {"beta_schedule": COMFY_BETA_SCHEDULES[schedule],
                "linear_start": float(scheduler_config.get("beta_start", 1e-4)),
                "linear_end": float(scheduler_config.get("beta_end", 0.02)),
                "timesteps": int(scheduler_config.get("num_train_timesteps", 1000))}
    return settings, model_types[prediction]


@functools.lru_cache(maxsize=None)
def _comfy_classes() -> tuple[type, type, type]:
    """(latent format, model config, BaseModel) subclasses, defined once ComfyUI is importable."""
    latent_formats = _comfy.require("comfy.latent_formats")
    model_base = _comfy.require("comfy.model_base")
    supported_models_base = _comfy.require("comfy.supported_models_base")

    class PixelLatentFormat(latent_formats.LatentFormat):
        """Pixels in [-1, 1], channels first: no scaling, no downscaling."""

        scale_factor = 1.0
        spacial_downscale_ratio = 1

        def __init__(self, channels: int = 3):
            self.latent_channels = channels
            eye = [[0.5 if (i == j or channels == 1) else 0.0 for j in range(3)] for i in range(channels)]
            self.latent_rgb_factors = eye
            self.latent_rgb_factors_bias = [0.5, 0.5, 0.5]

    class PixelDDPMConfig(supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True}
        unet_extra_config = {}
        latent_format = PixelLatentFormat
        memory_usage_factor = 1.0
        supported_inference_dtypes = [torch.float32, torch.float16, torch.bfloat16]

    class PixelDDPM(model_base.BaseModel):
        """An unconditional pixel DDPM; conditioning inputs are accepted and ignored."""

        def __init__(self, model_config: Any, unet: torch.nn.Module, model_type: Any, device: Any = None):
            super().__init__(model_config, model_type=model_type, device=device)
            self.diffusion_model = DiffusersUNetWrapper(unet)
            self.diffusion_model.requires_grad_(False)
            self.diffusion_model.eval()

        def extra_conds(self, **kwargs: Any) -> dict[str, Any]:
            return {}

    return PixelLatentFormat, PixelDDPMConfig, PixelDDPM


def check_pixel_unet(unet: torch.nn.Module) -> None:
    if getattr(unet, "mid_block", None) is None:
        raise HSpaceError(f"{type(unet).__name__} has no mid_block: a UNet2DModel with a middle block expected")
    check_pixel_unet_config({"_class_name": type(unet).__name__, **dict(getattr(unet, "config", {}))},
                            type(unet).__name__)


def wrap_unet(unet: torch.nn.Module, scheduler_config: dict[str, Any], source: str | None = None) -> Any:
    """A ComfyUI MODEL (ModelPatcher) over a diffusers pixel UNet and its scheduler config."""
    check_pixel_unet(unet)
    model_base = _comfy.require("comfy.model_base")
    model_management = _comfy.require("comfy.model_management")
    model_patcher = _comfy.require("comfy.model_patcher")
    latent_format_cls, config_cls, model_cls = _comfy_classes()

    settings, model_type = comfy_sampling_settings(scheduler_config)
    config = config_cls({"disable_unet_model_creation": True, "in_channels": int(unet.config.in_channels)})
    config.sampling_settings = settings
    config.latent_format = latent_format_cls(int(unet.config.in_channels))
    offload_device = model_management.unet_offload_device()
    model = model_cls(config, unet.to(offload_device), getattr(model_base.ModelType, model_type),
                      device=offload_device)
    patcher = model_patcher.ModelPatcher(model, load_device=model_management.get_torch_device(),
                                         offload_device=offload_device)
    if source is not None:  # lets clone(force_deepcopy=True) reload a fresh, autograd-capable copy
        patcher.cached_patcher_init = (load_pixel_model, (source,))
    return patcher


def _find_diffusers_folder(path: Path) -> tuple[Path, Path]:
    """(unet folder, scheduler config file) of a diffusers pipeline or model folder."""
    if (path / "unet" / "config.json").is_file():
        unet_dir = path / "unet"
    elif (path / "config.json").is_file():
        unet_dir = path
    else:
        raise HSpaceError(f"a diffusers folder (config.json, or unet/config.json) expected at {path}")
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json",
                      unet_dir / "scheduler_config.json"):
        if candidate.is_file():
            return unet_dir, candidate
    raise HSpaceError(f"no scheduler_config.json found in {path} (nor in its scheduler/ folder)")


def load_unet_and_schedule(source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The diffusers UNet and scheduler config of ``source``: :data:`EMBEDDED` or a diffusers folder path."""
    if source == EMBEDDED:
        from ..hspace_core.embedded import load_default_scheduler_config, load_default_unet

        return load_default_unet(), load_default_scheduler_config()
    from diffusers import UNet2DModel

    unet_dir, scheduler_file = _find_diffusers_folder(Path(source))
    check_unet_folder(unet_dir)
    scheduler_config = read_json(scheduler_file, "the scheduler config")
    try:
        unet, info = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise HSpaceError(f"a diffusers UNet2DModel expected in {unet_dir}: {one_line(exc)}") from None
    check_loading_info(info, unet_dir)
    return unet.eval(), scheduler_config


def load_pixel_model(source: str = EMBEDDED, disable_dynamic: bool = False) -> Any:
    """Load a pixel DDPM as a ComfyUI MODEL (``disable_dynamic`` is accepted for ComfyUI's reload protocol)."""
    with torch.inference_mode(False):
        unet, scheduler_config = load_unet_and_schedule(source)
    return wrap_unet(unet, scheduler_config, source=source)


# -- latents <-> images -----------------------------------------------------------------------------------------

def latent_to_image(samples: torch.Tensor) -> torch.Tensor:
    """Pixel latents [B, C, H, W] in [-1, 1] -> a ComfyUI IMAGE [B, H, W, 3] in [0, 1] (1 channel -> grey)."""
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise HSpaceError(f"pixel latents [B, 1 or 3, H, W] expected, got shape {list(samples.shape)}")
    images = ((samples.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.movedim(1, -1).contiguous()


def image_to_latent(images: torch.Tensor, channels: int) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] in [0, 1] -> pixel latents [B, channels, H, W] in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] < 1:
        raise HSpaceError(f"an IMAGE [B, H, W, C] expected, got shape {list(images.shape)}")
    pixels = check_batch(images.float().movedim(-1, 1), "the IMAGE", value_range=(0.0, 1.0))[:, :3]
    if channels == 1:
        pixels = pixels.mean(dim=1, keepdim=True)
    elif pixels.shape[1] == 1:
        pixels = pixels.repeat(1, channels, 1, 1)
    if pixels.shape[1] != channels:
        raise HSpaceError(f"an image with {channels} channels (or grey) expected, got {pixels.shape[1]}")
    return pixels * 2.0 - 1.0


def _diffusers_choices() -> list[str]:
    folder_paths = _comfy.optional("folder_paths")
    if folder_paths is None:
        return [EMBEDDED]
    names = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            names += sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return [EMBEDDED, *names]


def _resolve_choice(name: str) -> str:
    if name == EMBEDDED or os.path.isdir(name):
        return name
    folder_paths = _comfy.require("folder_paths")
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise HSpaceError(f"no diffusers folder named {name!r} under models/diffusers")


# -- nodes (V1) ---------------------------------------------------------------------------------------------------

class HSpacePixelModelLoader:
    """Load a pixel-space DDPM (diffusers UNet2DModel) as a MODEL for KSampler, SamplerCustom and the hspace nodes."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model_name": (_diffusers_choices(), {
            "tooltip": "the embedded 16x16 MNIST model, or a folder under models/diffusers"})}}

    def load(self, model_name: str) -> tuple[Any]:
        return (load_pixel_model(_resolve_choice(model_name)),)


class HSpacePixelLatentToImage:
    """Turn the LATENT of a pixel-space model into an IMAGE (no VAE: the latent is the image in [-1, 1])."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT", {"tooltip": "pixel-space latent of a pixel model (its x0)"})}}

    def convert(self, samples: dict[str, Any]) -> dict[str, Any]:
        image = latent_to_image(samples["samples"])
        # shown enlarged (nearest neighbour) on the node; the IMAGE output keeps the model's size
        return {"ui": {"images": _comfy.preview_images(enlarged(image))}, "result": (image,)}


class HSpaceImageToPixelLatent:
    """Turn an IMAGE into the LATENT of a pixel-space model (for inversion and img2img)."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {"tooltip": "images to put in the pixel model's space ([-1, 1])"}),
                             "model": ("MODEL", {"tooltip": "the pixel model whose channel count the latent takes"})}}

    def convert(self, image: torch.Tensor, model: Any) -> tuple[dict[str, torch.Tensor]]:
        channels = int(model.get_model_object("latent_format").latent_channels)
        return ({"samples": image_to_latent(image, channels)},)


class HSpaceUnconditional:
    """An empty CONDITIONING for unconditional (pixel-space) models, to feed KSampler's positive and negative."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def make(self) -> tuple[list]:
        return ([[torch.zeros(1, 1, 1), {}]],)


NODE_CLASS_MAPPINGS = {
    "HSpacePixelModelLoader": HSpacePixelModelLoader,
    "HSpacePixelLatentToImage": HSpacePixelLatentToImage,
    "HSpaceImageToPixelLatent": HSpaceImageToPixelLatent,
    "HSpaceUnconditional": HSpaceUnconditional,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "HSpacePixelModelLoader": "Load Pixel DDPM (hspace)",
    "HSpacePixelLatentToImage": "Pixel Latent to Image (hspace)",
    "HSpaceImageToPixelLatent": "Image to Pixel Latent (hspace)",
    "HSpaceUnconditional": "Unconditional (hspace)",
}
