"""Pixel-space models as ordinary ComfyUI MODELs: DDPMs (diffusers ``UNet2DModel``) and the embedded
flow-matching DiT (diffusers ``DiTTransformer2DModel``).

The diffusers UNet sits inside a ``comfy.model_base.BaseModel`` subclass, wrapped by a module that calls it the
way ComfyUI calls a diffusion model (``x_t``, timesteps, transformer_options) and runs the
``middle_block_after_patch`` list from a forward hook on ``unet.mid_block`` for the duration of each call.
The DiT is wrapped the same way in a BaseModel with ComfyUI's flow model sampling (ModelType.FLOW: CONST and
ModelSamplingDiscreteFlow, shift 1, multiplier 1000, so it receives the timestep 1000 sigma it was trained with);
its blocks honour ``patches_replace["dit"][("double_block", i)]`` block replacements like ComfyUI's own Flux and
MMDiT (:class:`ReplaceableBlocks`).
Converting their latents to and from IMAGEs is in ``pixel_latents``, the nodes in ``pixel_nodes``. The
schedule is a ``ModelSamplingDiscrete`` built from the diffusers scheduler config (linear betas 1e-4..0.02 are
ComfyUI's "sqrt_linear"), EPS or V_PREDICTION. The latent format is pixel space (downscale 1, scale 1), so
KSampler / SamplerCustom sample in [-1, 1] pixel units; ``HSpacePixelLatentToImage`` turns the result into an
IMAGE without a VAE (EmptyLatentImage works too: ComfyUI resizes its empty latent to downscale ratio 1).

ComfyUI is imported only inside functions; the ComfyUI classes are built on first use.
"""
from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..hspace_core.checks import check_batch, check_pixel_unet_config
from ..hspace_core.denoisers import load_diffusers_folder
from ..hspace_core.errors import HSpaceError

from . import _comfy

if TYPE_CHECKING:
    from ..hspace_core.transformer_denoisers import DiffusersTransformerDenoiser

EMBEDDED = "hspace-mnist-16 (embedded)"
EMBEDDED_DIT = "hspace-mnist-16 DiT (embedded)"
BLOCK_NAME = "double_block"  # the patches_replace["dit"] name of a DiT block, as ComfyUI's MMDiT calls its blocks
FLOW_SETTINGS = {"shift": 1.0, "multiplier": 1000}  # ModelSamplingDiscreteFlow: timestep = 1000 sigma, as trained
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

        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            call_options = {**options, "block": ("middle", 0)}
            for patch in patches:
                h = patch({"h": h, "x": x, "emb": None, "context": context, "y": y, "timesteps": timesteps,
                           "transformer_options": call_options})["h"]
            return (h, *output[1:]) if isinstance(output, tuple) else h

        with _forward_hook(self.unet.mid_block, hook if patches else None):
            return self.unet(x, timesteps.to(x.device), return_dict=False)[0]


@contextlib.contextmanager
def _forward_hook(module: torch.nn.Module, hook: Callable[..., Any] | None) -> Iterator[None]:
    """``hook`` as a forward hook of ``module`` for the duration of the block (None: no hook)."""
    handle = None if hook is None else module.register_forward_hook(hook)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _attention_output_patches(attention: torch.nn.Module, options: dict[str, Any]) -> Any:
    """ComfyUI's ``attn1_output_patch`` list of the call's options applied to the output of the block's
    self-attention (diffusers' ``attn1``, after its output projection: the library's ``.attn.output`` site), as
    Flux's blocks apply it to theirs; a context manager for the block's call."""
    patches = (options.get("patches") or {}).get("attn1_output_patch") or []

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        for patch in patches:
            output = patch(output, options)
        return output

    return _forward_hook(attention, hook if patches else None)


def _replaced(block: torch.nn.Module, replacement: Callable[..., dict], options: dict[str, Any]) -> Callable:
    """``block`` run through a ComfyUI block replacement: the replacement gets the block's image tokens and calls
    ``original_block`` to run the block itself on what it passes as ``"img"``."""
    def run(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        def original_block(block_args: dict[str, Any]) -> dict[str, torch.Tensor]:
            block_options = block_args.get("transformer_options") or {}
            with _attention_output_patches(block.attn1, block_options):
                return {"img": block(block_args["img"], *args, **kwargs)}

        out = replacement({"img": hidden_states, "timestep": kwargs.get("timestep"),
                           "class_labels": kwargs.get("class_labels"), "transformer_options": options},
                          {"original_block": original_block})
        return out["img"]

    return run


class ReplaceableBlocks(torch.nn.ModuleList):
    """A DiT's ``transformer_blocks`` whose iteration (diffusers' forward runs ``for block in self.transformer_blocks``)
    hands block i to ``transformer_options["patches_replace"]["dit"][("double_block", i)]`` where the current call
    has one, as ComfyUI's Flux and MMDiT forwards do. The options of the call are set on the list for its duration
    (:class:`DiffusersDiTWrapper`); indexing, the modules and the state dict stay the plain list's, so the weights
    keep diffusers' names (and the library's fingerprint)."""

    def __init__(self, blocks: torch.nn.ModuleList):
        super().__init__(blocks)
        self.transformer_options: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        options = self.transformer_options or {}
        replacements = (options.get("patches_replace") or {}).get("dit") or {}
        for index, block in enumerate(super().__iter__()):
            replacement = replacements.get((BLOCK_NAME, index))
            if replacement is None:
                yield block
            else:
                yield _replaced(block, replacement, {**options, "block_index": index, "block_type": "double",
                                                     "total_blocks": len(self)})


class DiffusersDiTWrapper(torch.nn.Module):
    """A diffusers ``DiTTransformer2DModel`` trained for rectified flow (velocity prediction) called like a ComfyUI
    diffusion model, at one class: the null class, so unconditional (conditioning inputs are accepted and
    ignored), like the embedded UNet. Its blocks honour ComfyUI's ``patches_replace["dit"]`` block replacements."""

    def __init__(self, dit: torch.nn.Module):
        super().__init__()
        if not isinstance(getattr(dit, "transformer_blocks", None), torch.nn.ModuleList):
            raise HSpaceError(f"a diffusers DiTTransformer2DModel with transformer_blocks expected, got "
                              f"{type(dit).__name__}")
        if not isinstance(dit.transformer_blocks, ReplaceableBlocks):
            dit.transformer_blocks = ReplaceableBlocks(dit.transformer_blocks)
        self.dit = dit
        self.class_label = int(dit.config.num_embeds_ada_norm)  # diffusers' label embedding: the null class

    @property
    def transformer_blocks(self) -> ReplaceableBlocks:
        return self.dit.transformer_blocks

    @property
    def hidden_size(self) -> int:
        return int(self.dit.inner_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    def denoiser(self, site: str | None = None) -> "DiffusersTransformerDenoiser":
        """hspace_core's denoiser over this DiT at the same class, h at ``site``: the library's fingerprint and
        autograd products of the model ComfyUI samples."""
        from ..hspace_core.embedded import dit_denoiser

        return dit_denoiser(self.dit, site)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Any = None, y: Any = None,
                control: Any = None, transformer_options: dict[str, Any] | None = None, **kwargs: Any) -> torch.Tensor:
        config = self.dit.config
        check_batch(x, "the DiT's input", channels=int(config.in_channels), size=(config.sample_size,) * 2)
        labels = torch.full((x.shape[0],), self.class_label, dtype=torch.long, device=x.device)
        self.transformer_blocks.transformer_options = dict(transformer_options or {})
        try:
            out = self.dit(hidden_states=x, timestep=timesteps.to(x.device), class_labels=labels,
                           return_dict=False)[0]
        finally:
            self.transformer_blocks.transformer_options = None
        return out[:, :x.shape[1]]  # with learned variance the velocity is the first half


PIXEL_WRAPPERS = (DiffusersUNetWrapper, DiffusersDiTWrapper)


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
def _comfy_classes() -> tuple[type, type, type, type]:
    """(latent format, model config, DDPM and DiT BaseModel) subclasses, defined once ComfyUI is importable."""
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

    class PixelModel(model_base.BaseModel):
        """A pixel-space model over a wrapped diffusers network; conditioning inputs are accepted and ignored."""

        def __init__(self, model_config: Any, network: torch.nn.Module, model_type: Any, device: Any = None):
            super().__init__(model_config, model_type=model_type, device=device)
            self.diffusion_model = network
            self.diffusion_model.requires_grad_(False)
            self.diffusion_model.eval()

        def extra_conds(self, **kwargs: Any) -> dict[str, Any]:
            return {}

    class PixelDDPM(PixelModel):
        """An unconditional pixel DDPM (a diffusers UNet)."""

    class PixelFlowDiT(PixelModel):
        """A pixel flow-matching DiT sampled at its null class (unconditional)."""

    return PixelLatentFormat, PixelDDPMConfig, PixelDDPM, PixelFlowDiT


def _patcher(model_cls: type, network: torch.nn.Module, channels: int, sampling_settings: dict[str, Any],
             model_type: str, source: str | None) -> Any:
    """A ComfyUI MODEL (ModelPatcher) over a BaseModel of ``model_cls`` holding ``network``, in pixel latents."""
    model_base = _comfy.require("comfy.model_base")
    model_management = _comfy.require("comfy.model_management")
    model_patcher = _comfy.require("comfy.model_patcher")
    latent_format_cls, config_cls = _comfy_classes()[:2]
    config = config_cls({"disable_unet_model_creation": True, "in_channels": channels})
    config.sampling_settings = sampling_settings
    config.latent_format = latent_format_cls(channels)
    offload_device = model_management.unet_offload_device()
    model = model_cls(config, network.to(offload_device), getattr(model_base.ModelType, model_type),
                      device=offload_device)
    patcher = model_patcher.ModelPatcher(model, load_device=model_management.get_torch_device(),
                                         offload_device=offload_device)
    if source is not None:  # lets clone(force_deepcopy=True) reload a fresh, autograd-capable copy
        patcher.cached_patcher_init = (load_pixel_model, (source,))
    return patcher


def check_pixel_unet(unet: torch.nn.Module) -> None:
    if getattr(unet, "mid_block", None) is None:
        raise HSpaceError(f"{type(unet).__name__} has no mid_block: a UNet2DModel with a middle block expected")
    check_pixel_unet_config({"_class_name": type(unet).__name__, **dict(getattr(unet, "config", {}))},
                            type(unet).__name__)


def wrap_unet(unet: torch.nn.Module, scheduler_config: dict[str, Any], source: str | None = None) -> Any:
    """A ComfyUI MODEL (ModelPatcher) over a diffusers pixel UNet and its scheduler config."""
    check_pixel_unet(unet)
    settings, model_type = comfy_sampling_settings(scheduler_config)
    return _patcher(_comfy_classes()[2], DiffusersUNetWrapper(unet), int(unet.config.in_channels), settings,
                    model_type, source)


def wrap_dit(dit: torch.nn.Module, source: str | None = None) -> Any:
    """A ComfyUI MODEL over a diffusers pixel ``DiTTransformer2DModel`` trained for rectified flow (velocity
    prediction, model timestep 1000 sigma), sampled at its null class."""
    return _patcher(_comfy_classes()[3], DiffusersDiTWrapper(dit), int(dit.config.in_channels), dict(FLOW_SETTINGS),
                    "FLOW", source)


def load_unet_and_schedule(source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The diffusers UNet and scheduler config of ``source``: :data:`EMBEDDED` or a diffusers folder path."""
    if source == EMBEDDED:
        from ..hspace_core.embedded import load_default_scheduler_config, load_default_unet

        return load_default_unet(), load_default_scheduler_config()
    return load_diffusers_folder(source)


def load_pixel_model(source: str = EMBEDDED, disable_dynamic: bool = False) -> Any:
    """Load a pixel model as a ComfyUI MODEL: :data:`EMBEDDED_DIT`, else a DDPM (:func:`load_unet_and_schedule`)
    (``disable_dynamic`` is accepted for ComfyUI's reload protocol)."""
    if source == EMBEDDED_DIT:
        from ..hspace_core.embedded import load_default_dit

        with torch.inference_mode(False):
            dit = load_default_dit()
        return wrap_dit(dit, source=source)
    with torch.inference_mode(False):
        unet, scheduler_config = load_unet_and_schedule(source)
    return wrap_unet(unet, scheduler_config, source=source)
