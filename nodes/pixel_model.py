"""Pixel-space DDPMs (diffusers ``UNet2DModel``) as ordinary ComfyUI MODELs.

The diffusers UNet sits inside a ``comfy.model_base.BaseModel`` subclass, wrapped by a module that calls it the
way ComfyUI calls a diffusion model (``x_t``, timesteps, transformer_options) and runs the
``middle_block_after_patch`` list from a forward hook on ``unet.mid_block`` for the duration of each call.
Converting their latents to and from IMAGEs is in ``pixel_latents``, the nodes in ``pixel_nodes``. The
schedule is a ``ModelSamplingDiscrete`` built from the diffusers scheduler config (linear betas 1e-4..0.02 are
ComfyUI's "sqrt_linear"), EPS or V_PREDICTION. The latent format is pixel space (downscale 1, scale 1), so
KSampler / SamplerCustom sample in [-1, 1] pixel units; ``HSpacePixelLatentToImage`` turns the result into an
IMAGE without a VAE (EmptyLatentImage works too: ComfyUI resizes its empty latent to downscale ratio 1).

ComfyUI is imported only inside functions; the ComfyUI classes are built on first use.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from ..hspace_core.checks import check_batch, check_pixel_unet_config
from ..hspace_core.denoisers import load_diffusers_folder
from ..hspace_core.errors import HSpaceError

from . import _comfy

EMBEDDED = "hspace-mnist-16 (embedded)"
COMFY_BETA_SCHEDULES = {"linear": "sqrt_linear", "scaled_linear": "linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}


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


def load_unet_and_schedule(source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The diffusers UNet and scheduler config of ``source``: :data:`EMBEDDED` or a diffusers folder path."""
    if source == EMBEDDED:
        from ..hspace_core.embedded import load_default_scheduler_config, load_default_unet

        return load_default_unet(), load_default_scheduler_config()
    return load_diffusers_folder(source)


def load_pixel_model(source: str = EMBEDDED, disable_dynamic: bool = False) -> Any:
    """Load a pixel DDPM as a ComfyUI MODEL (``disable_dynamic`` is accepted for ComfyUI's reload protocol)."""
    with torch.inference_mode(False):
        unet, scheduler_config = load_unet_and_schedule(source)
    return wrap_unet(unet, scheduler_config, source=source)
