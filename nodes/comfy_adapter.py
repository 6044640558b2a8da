"""The ComfyUI adapter: the h-space controller on a ComfyUI MODEL, samplers as SAMPLERs, schedules, autograd.

ComfyUI is imported only inside functions (through :mod:`._comfy`), so this module imports in plain pytest.

The hook site of a UNet is ComfyUI's ``middle_block_after_patch`` (``ModelPatcher.set_model_middle_block_after_patch``),
registered on a ``model.clone()``; on ComfyUI versions without it, an ``output_block_patch`` that acts only at
block ``("output", 0)``, where ``h`` is still the middle-block output. A Flux or SD3 transformer is hooked at the
output of one block through ComfyUI's block replacement, ``patches_replace["dit"][("double_block" | "single_block",
i)]`` (``ModelPatcher.set_model_patch_replace``), which both families' forwards call with the block's inputs and the
``original_block``; the controller sees that block's image tokens ``[B, tokens, dim]`` (text tokens and Kontext
reference tokens pass unchanged), or those of its joint attention's output before the output projection
(FluxSpace's space), through a patch set in the options of that block's call only. The patch reads the timestep of the call, the cond/uncond chunk labels and the
per-call flags a sampler put under ``transformer_options["hspace"]``. The timesteps of a flow-matching (CONST) model
are hspace's ``1000 sigma`` (:class:`~hspace_core.schedule.FlowSchedule`) for every family, as in the library.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import torch

from ..hspace_core.errors import HSpaceError
from ..hspace_core.schedule import FLOW, FlowSchedule, NoiseForm, VE
from ..hspace_core.sites import MID_BLOCK, HookSite

from . import _comfy

Controller = Callable[..., torch.Tensor]

FLAGS_KEY = "hspace"
MIDDLE_PATCH = "middle_block_after_patch"
NON_UNET_REASON = ("hspace hooks the output of a UNet's middle block, or a block of a Flux or SD3 transformer (or "
                   "of the pack's embedded DiT) "
                   "through ComfyUI's patches_replace['dit']; this model has no diffusion_model.middle_block and "
                   "is none of those transformer families (other DiT/MMDiT families such as PixArt, WAN, Chroma "
                   "and Stable Cascade's stages are not supported)")
# The transformer families whose forward honours patches_replace["dit"] block replacements (checked in
# comfy/ldm/flux/model.py and comfy/ldm/modules/diffusionmodules/mmdit.py): ComfyUI's BaseModel class name ->
# {block list attribute of the diffusion model: the replacement's block name}.
# The pack's embedded DiT (PixelFlowDiT, nodes/pixel_model.py) honours them the same way.
TRANSFORMER_BLOCKS = {"Flux": {"double_blocks": "double_block", "single_blocks": "single_block"},
                      "SD3": {"joint_blocks": "double_block"},
                      "PixelFlowDiT": {"transformer_blocks": "double_block"}}


# -- model inspection -------------------------------------------------------------------------------------

def base_model(model: Any) -> Any:
    """The ``BaseModel`` of a ModelPatcher (or the object itself when it is already one)."""
    return getattr(model, "model", model)


def diffusion_model(model: Any) -> Any:
    """``model.model.diffusion_model`` of a ComfyUI MODEL, or a clear error."""
    inner = getattr(base_model(model), "diffusion_model", None)
    if inner is None:
        raise HSpaceError(f"a ComfyUI MODEL (a ModelPatcher over a BaseModel with a diffusion_model) expected, "
                          f"got {type(model).__name__}")
    return inner


def check_unet(model: Any) -> Any:
    """The UNet of a ComfyUI MODEL; refuses models without a middle block, naming the model class."""
    inner = diffusion_model(model)
    if getattr(inner, "middle_block", None) is None:
        kind = type(base_model(model)).__name__
        raise HSpaceError(f"{kind} ({type(inner).__name__}) is not supported: {NON_UNET_REASON}")
    return inner


def family(model: Any) -> str:
    """"unet" for a model with a middle block, else its transformer family ("Flux", "SD3"); others are refused."""
    inner = diffusion_model(model)
    if getattr(inner, "middle_block", None) is not None:
        return "unet"
    kind = type(base_model(model)).__name__
    if kind not in TRANSFORMER_BLOCKS:
        raise HSpaceError(f"{kind} ({type(inner).__name__}) is not supported: {NON_UNET_REASON}")
    missing = [name for name in TRANSFORMER_BLOCKS[kind]
               if not isinstance(getattr(inner, name, None), torch.nn.ModuleList)]
    if missing:
        raise HSpaceError(f"{kind} ({type(inner).__name__}) is not supported: its diffusion model lacks the block "
                          f"lists {missing} that hspace hooks through patches_replace['dit']")
    if noise_form(model) is not FLOW:
        raise HSpaceError(f"{kind} with model sampling {type(model_sampling(model)).__name__} is not supported: hspace "
                          "runs transformers in the rectified-flow form (ComfyUI's CONST model sampling)")
    return kind


def noise_form(model: Any) -> NoiseForm:
    """FLOW for a model whose model sampling is ComfyUI's CONST (rectified flow), else VE (k-diffusion's form)."""
    classes = {cls.__name__ for cls in type(model_sampling(model)).__mro__}
    return FLOW if "CONST" in classes else VE


def default_site(model: Any) -> str:
    """The hook site "auto" means: a UNet's middle block, a transformer's middle block of its first block list."""
    kind = family(model)
    if kind == "unet":
        return MID_BLOCK
    blocks = next(iter(TRANSFORMER_BLOCKS[kind]))
    return HookSite("block", blocks, len(getattr(diffusion_model(model), blocks)) // 2).name


def resolve_site(model: Any, site: str | None = "auto") -> str:
    """The hook site name for a MODEL: ``site`` checked against the model ("auto" or None: :func:`default_site`)."""
    if site in (None, "", "auto"):
        return default_site(model)
    kind = family(model)
    parsed = HookSite.parse(site)
    if kind == "unet":
        if parsed.kind != "mid_block":
            raise HSpaceError(f"a UNet is hooked at its middle block ({MID_BLOCK!r}), got the hook site {site!r}")
        return parsed.name
    names = TRANSFORMER_BLOCKS[kind]
    if parsed.kind == "mid_block" or parsed.blocks not in names:
        choices = " or ".join(f"'{name}.<i>.output' / '{name}.<i>.attn.output'" for name in names)
        raise HSpaceError(f"{kind} is hooked at a block's output or its attention's output through ComfyUI's block "
                          f"replacements: a hook site {choices} expected, got {site!r}")
    count = len(getattr(diffusion_model(model), parsed.blocks))
    if parsed.index >= count:
        raise HSpaceError(f"{kind} has {count} {parsed.blocks}: index {parsed.index} is out of range")
    return parsed.name


def token_dim(model: Any) -> int | None:
    """The width of a transformer's tokens (its ``hidden_size``), None where the diffusion model does not say."""
    size = getattr(diffusion_model(model), "hidden_size", None)
    return int(size) if size is not None else None


def model_sampling(model: Any) -> Any:
    """ComfyUI's ``model_sampling`` object of a MODEL (honouring object patches such as ModelSamplingDiscrete)."""
    if hasattr(model, "get_model_object"):
        return model.get_model_object("model_sampling")
    ms = getattr(base_model(model), "model_sampling", None)
    if ms is None:
        raise HSpaceError(f"a ComfyUI MODEL with a model_sampling expected, got {type(model).__name__}")
    return ms


def _device(sampling: Any) -> torch.device:
    sigmas = getattr(sampling, "sigmas", None)
    return sigmas.device if isinstance(sigmas, torch.Tensor) else torch.device("cpu")


# -- the patch ----------------------------------------------------------------------------------------------

def _first(value: Any) -> float | None:
    """The value of the first row (ComfyUI runs all rows of one model call at the same sigma)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value.detach().flatten()[0]) if value.numel() else None
    return float(value)


class _ControllerPatch:
    """Calls the controller with what ComfyUI's transformer_options say about the current model call."""

    def __init__(self, controller: Controller, sampling: Any):
        self.controller = controller
        self.sampling = sampling

    def timestep(self, transformer_options: dict[str, Any], timesteps: Any = None) -> float | None:
        if timesteps is not None:
            return _first(timesteps)
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            raise HSpaceError("the h-space patch found neither the timesteps nor transformer_options['sigmas']")
        sigma = torch.as_tensor(sigmas).flatten()[:1]
        return _first(self.sampling.timestep(sigma.to(_device(self.sampling))))

    def apply(self, h: torch.Tensor, transformer_options: dict[str, Any], timesteps: Any = None) -> torch.Tensor:
        sigmas = transformer_options.get("sigmas")
        cond_or_uncond = list(transformer_options.get("cond_or_uncond") or [0])
        flags = transformer_options.get(FLAGS_KEY) or {}
        return self.controller(h, self.timestep(transformer_options, timesteps), cond_or_uncond, flags,
                               sigma=_first(sigmas))


class MiddleBlockPatch(_ControllerPatch):
    """A ``middle_block_after_patch``: ``args -> args`` with ``"h"`` replaced."""

    def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        h = self.apply(args["h"], args.get("transformer_options") or {}, args.get("timesteps"))
        return {**args, "h": h}


class OutputBlockPatch(_ControllerPatch):
    """The fallback ``output_block_patch``: acts only at block ("output", 0), where h is the middle-block output."""

    def __call__(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict[str, Any]):
        if tuple(transformer_options.get("block", ())) != ("output", 0):
            return h, hsp
        return self.apply(h, transformer_options), hsp


def _image_span(args: dict[str, Any], options: dict[str, Any]) -> tuple[int, int]:
    """Where a block's image tokens are in its ``img`` stream: all of it, or in Flux's single blocks (text + image)
    ``transformer_options["img_slice"]``; Kontext's reference tokens (appended after the image tokens,
    ``transformer_options["reference_image_num_tokens"]``) are not part of h."""
    img = args["img"]
    start, end = options["img_slice"] if "txt" not in args and "img_slice" in options else (0, img.shape[1])
    return start, end - sum(options.get("reference_image_num_tokens") or [])


class TokenPatch(_ControllerPatch):
    """``tokens -> tokens`` with ``tokens[:, start:end]`` (the image tokens) through the controller."""

    def __init__(self, controller: Controller, sampling: Any, span: tuple[int, int], options: dict[str, Any]):
        super().__init__(controller, sampling)
        self.span = span
        self.options = options

    def __call__(self, tokens: torch.Tensor, extra_options: Any = None) -> torch.Tensor:
        start, end = self.span
        h = tokens[:, start:end]
        new = self.apply(h, self.options)
        if new is h:
            return tokens
        return torch.cat([tokens[:, :start], new.to(tokens.dtype), tokens[:, end:]], dim=1)


class AttentionOverride:
    """An ``optimized_attention_override`` (MMDiT has no attention-output patch) that runs the attention as it
    would have run (a model-wide override set before it included) and passes the output of the block's joint
    attention, ``total`` text + image tokens, through ``patch``; MMDiT-X's image-only second attention passes."""

    def __init__(self, patch: TokenPatch, total: int, previous: Callable[..., torch.Tensor] | None):
        self.patch = patch
        self.total = total
        self.previous = previous

    def __call__(self, func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.previous(func, *args, **kwargs) if self.previous is not None else func(*args, **kwargs)
        return self.patch(out) if out.shape[1] == self.total else out


class BlockReplacePatch(_ControllerPatch):
    """A ``patches_replace["dit"]`` block replacement: runs the block (or a replacement registered before it) and
    passes its image tokens through the controller: at the block's output, or (``attention``) at its joint
    attention's output before the output projection, through ComfyUI's ``attn1_output_patch`` (Flux's blocks; the
    pack's DiT), set in the options of this block's call only. ``joint_block``: the replaced block is SD3's MMDiT
    joint block, which has no attention patch (an ``optimized_attention_override`` instead) and is run here without
    the checkpointing of ComfyUI's own wrapper (:func:`_uncheckpointed_joint_block`)."""

    def __init__(self, controller: Controller, sampling: Any, earlier: Callable[..., dict] | None = None,
                 attention: bool = False, joint_block: torch.nn.Module | None = None):
        super().__init__(controller, sampling)
        self.earlier = earlier
        self.attention = attention
        self.original_block = None if joint_block is None else _uncheckpointed_joint_block(joint_block)

    def __call__(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        if self.original_block is not None:
            extra = {**extra, "original_block": self.original_block}
        options = args.get("transformer_options") or {}
        start, end = _image_span(args, options)
        if self.attention:
            return self._run({**args, "transformer_options": self._attention_options(args, options, start, end)},
                             extra)
        out = self._run(args, extra)
        img = out["img"]
        new = TokenPatch(self.controller, self.sampling, (start, end), options)(img)
        return out if new is img else {**out, "img": new}

    def _run(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        return self.earlier(args, extra) if self.earlier is not None else extra["original_block"](args)

    def _attention_options(self, args: dict[str, Any], options: dict[str, Any], start: int, end: int) -> dict:
        """The block's options with the attention hook: the attention runs over text + image tokens, text first."""
        offset = args["txt"].shape[1] if args.get("txt") is not None else 0
        patch = TokenPatch(self.controller, self.sampling, (offset + start, offset + end), options)
        if self.original_block is not None:  # MMDiT
            total = offset + args["img"].shape[1]
            return {**options, "optimized_attention_override":
                    AttentionOverride(patch, total, options.get("optimized_attention_override"))}
        patches = dict(options.get("patches") or {})
        patches["attn1_output_patch"] = [*patches.get("attn1_output_patch", []), patch]
        return {**options, "patches": patches}


def _uncheckpointed_joint_block(block: torch.nn.Module) -> Callable[[dict], dict]:
    """SD3's joint block as a replacement's ``original_block``. ComfyUI's own wrapper of a replaced block runs it
    under ``torch.utils.checkpoint`` (``mmdit.block_mixing``'s default), which torch.func's Jacobian products cannot
    differentiate through (saved tensor hooks); the blocks that are not replaced run without it. Same result."""
    def original_block(args: dict[str, Any]) -> dict[str, torch.Tensor]:
        txt, img = block(args["txt"], args["img"], c=args["vec"], use_checkpoint=False,
                         transformer_options=args["transformer_options"])
        return {"txt": txt, "img": img}

    return original_block


def _patch_transformer(model: Any, controller: Controller, kind: str, site: str) -> Any:
    parsed = HookSite.parse(site)
    patched = model.clone()
    key = (TRANSFORMER_BLOCKS[kind][parsed.blocks], parsed.index)
    options = getattr(patched, "model_options", {}).get("transformer_options", {})
    earlier = (options.get("patches_replace") or {}).get("dit", {}).get(key)
    sampling = timestep_schedule(patched)
    joint_block = getattr(diffusion_model(model), parsed.blocks)[parsed.index] if kind == "SD3" else None
    patch = BlockReplacePatch(controller, sampling, earlier, attention=parsed.kind == "attention",
                              joint_block=joint_block)
    patched.set_model_patch_replace(patch, "dit", *key)
    _publish_shifts_at(patched, controller, sampling)
    return patched


def has_middle_block_patch(model: Any) -> bool:
    """Whether this ComfyUI's ModelPatcher offers ``set_model_middle_block_after_patch``."""
    return hasattr(model, "set_model_middle_block_after_patch")


SITES = ("auto", "middle", "output0")


def patch_model(model: Any, controller: Controller, site: str = "auto", hook_site: str | None = None) -> Any:
    """A clone of the MODEL whose h at the hook site goes through ``controller(h, t, cond_or_uncond, flags)``.

    ``hook_site`` (:mod:`~hspace_core.sites`; None = :func:`default_site`): a UNet's middle block, or for Flux /
    SD3 a block output (``"double_blocks.<i>.output"``, ``"single_blocks.<i>.output"``, ``"joint_blocks.<i>.output"``)
    or that block's attention output (``"<blocks>.<i>.attn.output"``), hooked by a ``patches_replace["dit"]`` block
    replacement. ``site``, a UNet's patch point: "middle" =
    ``middle_block_after_patch``; "output0" = the ``output_block_patch`` fallback at block ("output", 0) (same h,
    for ComfyUI versions without the middle patch); "auto" = the first available.
    The input MODEL is never changed. Unsupported models are refused with :class:`HSpaceError`.
    """
    if site not in SITES:
        raise HSpaceError(f"site must be one of {SITES}, got {site!r}")
    kind = family(model)
    if kind != "unet":
        if site != "auto":
            raise HSpaceError(f"site {site!r} is a UNet patch point; {kind} is hooked through patches_replace['dit']")
        return _patch_transformer(model, controller, kind, resolve_site(model, hook_site))
    resolve_site(model, hook_site)
    inner = check_unet(model)
    patched = model.clone()
    sampling = model_sampling(patched)
    # Our pixel-model wrapper runs the named patch list itself, on every ComfyUI version.
    own_wrapper = bool(getattr(inner, "calls_middle_block_after_patch", False))
    if site == "output0" and own_wrapper:
        raise HSpaceError(f"the output-block fallback needs a ComfyUI UNetModel, not {type(inner).__name__}")
    if site == "middle" and not (own_wrapper or has_middle_block_patch(patched)):
        raise HSpaceError("this ComfyUI has no set_model_middle_block_after_patch; use site='output0' or 'auto'")
    if own_wrapper:
        patched.set_model_patch(MiddleBlockPatch(controller, sampling), MIDDLE_PATCH)
    elif site != "output0" and has_middle_block_patch(patched):
        patched.set_model_middle_block_after_patch(MiddleBlockPatch(controller, sampling))
    else:
        patched.set_model_output_block_patch(OutputBlockPatch(controller, sampling))
    _publish_shifts_at(patched, controller, sampling)
    return patched


def _publish_shifts_at(patched: Any, controller: Controller, sampling: Any) -> None:
    """Tell hspace's samplers, through the clone's transformer_options, at which sigmas anything shifts (this
    controller or one patched in before it), so that the asymmetric step runs one plain pass where nothing does
    (``samplers.sample_asyrp``): zero edits then sample bitwise like the plain sampler."""
    options = getattr(patched, "model_options", None)
    if options is None:
        return
    transformer_options = options.setdefault("transformer_options", {})
    flags = dict(transformer_options.get(FLAGS_KEY) or {})
    earlier = flags.get("shifts_at")
    own = getattr(controller, "shifts_at", None)

    def shifts_at(sigma: float) -> bool:
        if own is None or (earlier is not None and earlier(sigma)):
            return True
        return bool(own(float(sampling.timestep(torch.as_tensor(sigma, dtype=torch.float32)).flatten()[0])))

    flags["shifts_at"] = shifts_at
    transformer_options[FLAGS_KEY] = flags


# -- samplers -----------------------------------------------------------------------------------------------

def as_comfy_sampler(fn: Callable[..., torch.Tensor], **options: Any) -> Any:
    """A ComfyUI SAMPLER running the k-diffusion sampler function ``fn`` with ``options``."""
    samplers = _comfy.require("comfy.samplers")
    return samplers.KSAMPLER(fn, extra_options=options)


# -- schedules ----------------------------------------------------------------------------------------------

def prediction_type(model: Any) -> str:
    """"epsilon" or "v_prediction" for a discrete VP model; other parameterisations are refused."""
    ms_mod = _comfy.require("comfy.model_sampling")
    ms = model_sampling(model)
    if isinstance(ms, ms_mod.V_PREDICTION) and not isinstance(ms, getattr(ms_mod, "EDM", ())):
        return "v_prediction"
    if isinstance(ms, ms_mod.EPS) and not isinstance(ms, (ms_mod.V_PREDICTION, getattr(ms_mod, "X0", ()))):
        return "epsilon"
    raise HSpaceError(f"an EPS or V_PREDICTION model expected, got model sampling {type(ms).__name__} "
                      "(flow-matching, EDM and x0 models are not supported)")


def vp_schedule(model: Any) -> Any:
    """The :class:`hspace_core.schedule.VPSchedule` of a discrete VP MODEL: ``alphas_cumprod = 1 / (1 + sigmas^2)``."""
    from ..hspace_core.schedule import VPSchedule

    ms_mod = _comfy.require("comfy.model_sampling")
    ms = model_sampling(model)
    discrete = isinstance(ms, ms_mod.ModelSamplingDiscrete)
    if not discrete or isinstance(ms, getattr(ms_mod, "ModelSamplingDiscreteEDM", ())):
        raise HSpaceError(f"a discrete VP schedule (ModelSamplingDiscrete) expected, got {type(ms).__name__}")
    prediction_type(model)
    sigmas = ms.sigmas.detach().to("cpu", torch.float64)
    return VPSchedule(1.0 / (1.0 + sigmas ** 2))


def timestep_schedule(model: Any) -> Any:
    """What converts sigmas and timesteps for a MODEL: its model sampling, or for a flow model hspace's
    :class:`~hspace_core.schedule.FlowSchedule` (timestep = 1000 sigma for every family, as in the library)."""
    return FlowSchedule() if noise_form(model) is FLOW else model_sampling(model)


def schedule(model: Any) -> Any:
    """hspace_core's schedule of a MODEL: the :class:`FlowSchedule` of a flow model, else :func:`vp_schedule`."""
    return FlowSchedule() if noise_form(model) is FLOW else vp_schedule(model)


def timestep_to_sigma(model: Any, timestep: float | torch.Tensor) -> torch.Tensor:
    """ComfyUI's sigma for a model timestep (log-linear interpolation between integer steps; t / 1000 for flow)."""
    ms = timestep_schedule(model)
    return ms.sigma(torch.as_tensor(timestep, dtype=torch.float32, device=_device(ms))).cpu()


def sigma_to_timestep(model: Any, sigma: float | torch.Tensor) -> torch.Tensor:
    """ComfyUI's model timestep for a sigma (the nearest step in log sigma; 1000 sigma for flow)."""
    ms = timestep_schedule(model)
    return ms.timestep(torch.as_tensor(sigma, dtype=torch.float32, device=_device(ms))).cpu()


def percent_to_sigma(model: Any, percent: float) -> float:
    """ComfyUI's start/end percent convention (0 = start of sampling, 1 = end) as a sigma."""
    if not 0.0 <= percent <= 1.0:
        raise HSpaceError(f"a percent between 0 and 1 expected, got {percent}")
    return float(model_sampling(model).percent_to_sigma(percent))


def percent_window(model: Any, start_percent: float, end_percent: float) -> tuple[float, float]:
    """``(t_end, t_start)`` in model timesteps for an edit between two percents of the sampling process."""
    if start_percent > end_percent:
        raise HSpaceError(f"start_percent <= end_percent expected, got {start_percent} > {end_percent}")
    sigma_start, sigma_end = percent_to_sigma(model, start_percent), percent_to_sigma(model, end_percent)
    t_start = float(sigma_to_timestep(model, sigma_start))
    t_end = float(sigma_to_timestep(model, max(sigma_end, 1e-10)))
    return t_end, t_start


# -- autograd ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def autograd_enabled() -> Iterator[None]:
    """Leave ComfyUI's inference mode and enable grad (nodes run inside ``torch.inference_mode()``), with ComfyUI's
    ``model_management.in_training`` set: models then take their plain-torch paths (Flux's rotary embedding, not
    comfy-kitchen's fused op, whose autograd.Function torch.func's Jacobian products cannot transform)."""
    management = _comfy.optional("comfy.model_management")
    training = getattr(management, "in_training", None)
    if management is not None:
        management.in_training = True
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        if management is not None:
            management.in_training = training


def grad_ready(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) copy of a tensor that came from another node."""
    with torch.inference_mode(False):
        return tensor.detach().clone()


def _with_copied_unet(base: Any) -> Any:
    """A shallow copy of a BaseModel whose diffusion_model is a deep copy (made outside inference mode)."""
    new = base.__class__.__new__(base.__class__)
    new.__dict__.update(base.__dict__)
    for key in ("_modules", "_parameters", "_buffers"):
        new.__dict__[key] = base.__dict__[key].copy()
    inner = copy.deepcopy(base.diffusion_model)  # Parameter deepcopy clones: inference tensors become normal
    inner.requires_grad_(False)
    new._modules["diffusion_model"] = inner
    if hasattr(new, "current_patcher"):
        new.current_patcher = None
    return new


def autograd_copy(model: Any) -> Any:
    """A clone of the MODEL whose weights are ordinary tensors, so autograd can run through it.

    ComfyUI loads weights as inference tensors, which cannot be saved for backward. ``force_deepcopy``
    reloads the model outside inference mode (it doubles the UNet's memory); ComfyUI versions without it
    (up to 0.19.x) or models it cannot reload get a clone over a deep copy of the diffusion model instead.
    """
    with torch.inference_mode(False):
        try:
            return model.clone(force_deepcopy=True)
        except (TypeError, RuntimeError):
            pass
        if not hasattr(model, "get_clone_model_override"):
            raise HSpaceError(f"cannot make an autograd-capable copy of {type(model).__name__}: "
                              "this ComfyUI offers neither clone(force_deepcopy=True) nor model overrides")
        backups = tuple(type(v)() for v in model.get_clone_model_override()[1])
        return model.clone(model_override=(_with_copied_unet(base_model(model)), backups))


def _copied_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].clone(), *args[1:])


def out_of_place_norm_inputs(patcher: Any) -> Any:
    """``patcher`` (an autograd copy of a transformer) with a copy of its input given to each LayerNorm.

    Flux's blocks add their residuals in place (``img += ...``, ``x += ...``) into the tensors their LayerNorms
    saved for backward, so a reverse-mode product through any block after the hook site fails ("modified by an
    inplace operation"). The copy a forward pre-hook hands each LayerNorm is what it saves; the in-place adds leave
    it alone. Same values, one more tensor per norm; on this private copy only."""
    for module in diffusion_model(patcher).modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.register_forward_pre_hook(_copied_input)
    return patcher


# Attention functions of comfy.ldm.modules.attention made of ordinary torch ops (SDPA runs under
# sdpa_kernel(MATH) in hspace_core's products), so they have the double-backward and forward-mode
# derivatives the Jacobian products need; xformers, flash, sage and int8 kernels have neither.
DIFFERENTIABLE_ATTENTION = ("attention_pytorch", "attention_basic", "attention_split", "attention_sub_quad")


def differentiable_attention(patcher: Any) -> Any:
    """``patcher`` (an autograd copy) set to run ComfyUI's PyTorch attention where the active one has no double
    backward (xformers is ComfyUI's default on a GPU where it is installed, unless ``--disable-xformers``).

    ComfyUI's per-model override, ``ModelPatcher.set_model_optimized_attention`` (read by every attention call
    through ``transformer_options["optimized_attention_override"]``), changes this copy only: sampling elsewhere
    keeps xformers. A ComfyUI without it is refused before any product runs.
    """
    attention = _comfy.optional("comfy.ldm.modules.attention")
    active = getattr(attention, "optimized_attention", None)
    if active is None or any(active is getattr(attention, name, None) for name in DIFFERENTIABLE_ATTENTION):
        return patcher
    name = getattr(active, "__name__", type(active).__name__)
    if not hasattr(patcher, "set_model_optimized_attention") or not hasattr(attention, "attention_pytorch"):
        raise HSpaceError(f"Jacobian and pullback products need attention with a double backward, but ComfyUI runs {name}, "
                          "which has none, and this ComfyUI cannot switch attention per model: start ComfyUI "
                          "with --use-pytorch-cross-attention")
    patcher.set_model_optimized_attention(attention.attention_pytorch)
    return patcher


# -- progress ------------------------------------------------------------------------------------------------

def progress_callback(total: int, node_id: str | None = None) -> Callable[..., None] | None:
    """A callback for hspace_core's long loops that drives a ComfyUI ``ProgressBar`` (and so honours Cancel).

    Called as ``callback({"i": step, ...})`` (k-diffusion samplers) it sets the bar to ``i + 1``; called any other
    way it advances the bar by one. Returns None outside ComfyUI.
    """
    utils = _comfy.optional("comfy.utils")
    if utils is None:
        return None
    bar = utils.ProgressBar(total, node_id=node_id)
    interrupt = _comfy.optional("comfy.model_management")

    def callback(*args: Any, **kwargs: Any) -> None:
        info = args[0] if args and isinstance(args[0], dict) else kwargs
        if "i" in info:
            bar.update_absolute(int(info["i"]) + 1)
        else:
            bar.update(1)
        if interrupt is not None:
            interrupt.throw_exception_if_processing_interrupted()

    return callback
