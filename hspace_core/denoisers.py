"""diffusers UNets as k-diffusion denoisers, with the bottleneck controller hooked on ``mid_block``."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from .bottleneck import COND, UNCOND, Bottleneck
from .checks import check_loading_info, check_unet_folder, one_line, read_json
from .direction import check_finite, model_fingerprint
from .errors import HSpaceError
from .schedule import VE, NoiseForm, VPSchedule

PREDICTION_TYPES = ("epsilon", "v_prediction")


class _StopAtBottleneck(Exception):
    def __init__(self, h: torch.Tensor):
        self.h = h


class BottleneckOverride:
    """What the Jacobian code needs at the hook site, for any framework: stop at the bottleneck and return h
    (:meth:`encode`, the decoder never runs), or replace h by a given one (:meth:`replacing`). Called like a
    controller, ``override(h, ...) -> h``; in neither state it passes h through."""

    def __init__(self) -> None:
        self.stop = False
        self.replacement: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        h = h if self.replacement is None else self.replacement
        if self.stop:
            raise _StopAtBottleneck(h)
        return h

    def encode(self, run: Any) -> torch.Tensor:
        """h of the model call ``run()``, stopped at the bottleneck."""
        self.stop = True
        try:
            run()
        except _StopAtBottleneck as stop:
            return stop.h
        finally:
            self.stop = False
        raise HSpaceError("the model never reached its hook site")

    @contextlib.contextmanager
    def replacing(self, h: torch.Tensor) -> Iterator[None]:
        """Model calls inside the block see ``h`` as the bottleneck's output."""
        self.replacement = h
        try:
            yield
        finally:
            self.replacement = None


def _duplicate_chunks(t: torch.Tensor, chunks: int) -> torch.Tensor:
    """Rows ``[c_0; c_1; ...]`` (one block per cond/uncond chunk) -> ``[c_0; c_0; c_1; c_1; ...]``."""
    grouped = t.reshape(chunks, 1, t.shape[0] // chunks, *t.shape[1:])
    return grouped.expand(chunks, 2, *grouped.shape[2:]).reshape(2 * t.shape[0], *t.shape[1:])


def _duplicate_inputs(args: tuple, kwargs: dict, rows: int, chunks: int) -> tuple[tuple, dict]:
    """Duplicate every per-row tensor input of an up block (skips, temb, text embeddings) that still has the
    encoder's ``rows``; h itself already has twice as many."""
    def dup(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
            return _duplicate_chunks(value, chunks)
        if isinstance(value, (tuple, list)):
            return type(value)(dup(v) for v in value)
        return value

    return dup(args), {k: dup(v) for k, v in kwargs.items()}


def load_diffusers_folder(folder: str | Path, device: str | torch.device = "cpu",
                          default_schedule: bool = False) -> tuple[torch.nn.Module, dict]:
    """The pixel-DDPM ``UNet2DModel`` (eval mode) and the scheduler config of a diffusers folder: a pipeline folder
    (``unet/``, ``scheduler/scheduler_config.json``) or a model folder (``config.json`` and weights, with
    ``scheduler_config.json`` beside them). Never downloads. Without a scheduler config: an error, or with
    ``default_schedule`` an empty config (the DDPM defaults: linear betas 1e-4..0.02, 1000 steps, epsilon)."""
    from diffusers import UNet2DModel  # imported here: diffusers is slow to import

    folder = Path(folder)
    unet_dir = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    if not (unet_dir / "config.json").is_file():
        raise HSpaceError(f"no diffusers UNet (config.json, or unet/config.json) in {folder}: a diffusers folder "
                          "expected")
    candidates = (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json",
                  unet_dir / "scheduler_config.json")
    scheduler_file = next((c for c in candidates if c.is_file()), None)
    if scheduler_file is None and not default_schedule:
        raise HSpaceError(f"no scheduler_config.json found in {folder} (nor in its scheduler/ folder): the noise "
                          "schedule must come with the model")
    check_unet_folder(unet_dir)
    config = {} if scheduler_file is None else read_json(scheduler_file, "the scheduler config")
    try:
        unet, info = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False,
                                                 output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        raise HSpaceError(f"the UNet2DModel in {unet_dir} could not be loaded: {one_line(error)}") from None
    check_loading_info(info, unet_dir)
    return unet.to(device).eval(), config


def hspace_flags(model_options: dict[str, Any] | None) -> dict[str, Any]:
    """The per-call flags a sampler put in ``model_options["transformer_options"]["hspace"]``."""
    return ((model_options or {}).get("transformer_options") or {}).get("hspace") or {}


class GuidedDenoiser:
    """What the diffusers denoisers share: ``x0 = x - sigma * prediction`` (the prediction is eps for the VE form
    of a UNet, the velocity ``eps - x0`` for rectified flow: both give x0 back), and unguided calls for the
    Jacobians (``cfg_scale`` set to 1 for their duration)."""

    form: NoiseForm = VE
    cfg_scale: float
    controller: Bottleneck | None

    @contextlib.contextmanager
    def attached(self, controller: Bottleneck) -> Iterator[Bottleneck]:
        """Route every model call of the hook site through ``controller``."""
        previous, self.controller = self.controller, controller
        try:
            yield controller
        finally:
            self.controller = previous

    def prediction(self, x: torch.Tensor, sigma: torch.Tensor | float,
                   model_options: dict | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, model_options: dict | None = None,
                 **extra: Any) -> torch.Tensor:
        sigma_rows = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).flatten()
        sigma_rows = sigma_rows.expand(x.shape[0]) if sigma_rows.numel() == 1 else sigma_rows
        return x - sigma_rows.view(-1, *[1] * (x.ndim - 1)) * self.prediction(x, sigma, model_options)

    def model_timestep(self, sigma: float) -> float:
        """The model timestep the controller is given for a call at ``sigma``."""
        return float(self._timesteps(torch.tensor([float(sigma)], dtype=torch.float64))[0])

    def _timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.schedule.timestep(sigma)

    @contextlib.contextmanager
    def _unguided(self) -> Iterator[None]:
        saved, self.cfg_scale = self.cfg_scale, 1.0
        try:
            yield
        finally:
            self.cfg_scale = saved


class DiffusersDenoiser(GuidedDenoiser):
    """``denoiser(x, sigma, **extra) -> x0_hat`` for a diffusers ``UNet2DModel`` or ``UNet2DConditionModel``.

    ``x = x_t / sqrt(alpha_bar)`` and the UNet sees ``x_t`` at the (fractional) timestep of ``sigma``.
    For a conditional UNet give ``cond`` (and ``uncond`` with ``cfg_scale != 1`` for classifier-free
    guidance: rows are batched ``[uncond; cond]`` in one call, labelled ``cond_or_uncond = [1, 0]``).
    The controller is attached only inside ``with denoiser.attached(controller):``; the forward hook
    on ``mid_block`` lives only for the duration of each UNet call.
    """

    def __init__(self, unet: torch.nn.Module, schedule: VPSchedule, prediction_type: str = "epsilon",
                 cond: torch.Tensor | None = None, uncond: torch.Tensor | None = None, cfg_scale: float = 1.0):
        if getattr(unet, "mid_block", None) is None:
            raise HSpaceError(f"{type(unet).__name__} has no mid_block: a UNet with a middle block expected (for a "
                              "Flux, SD3 or DiT transformer use transformer_denoisers.DiffusersTransformerDenoiser)")
        if prediction_type not in PREDICTION_TYPES:
            raise HSpaceError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.conditional = hasattr(unet.config, "cross_attention_dim") and unet.config.cross_attention_dim
        if self.conditional and cond is None:
            raise HSpaceError(f"{type(unet).__name__} is conditional: text embeddings (cond) are required")
        if cfg_scale != 1.0 and uncond is None:
            raise HSpaceError("classifier-free guidance (cfg_scale != 1) needs the uncond embeddings")
        self.unet, self.schedule, self.prediction_type = unet, schedule, prediction_type
        self.cond, self.uncond, self.cfg_scale = cond, uncond, cfg_scale
        self.controller: Bottleneck | None = None
        self.override = BottleneckOverride()
        self._call: dict[str, Any] = {}

    @property
    def shares_encoder(self) -> bool:
        """Whether split calls can run the encoder once (not for Fourier time embeddings or skip-conv up blocks,
        whose forward uses the per-row timesteps or an extra skip path after the up blocks)."""
        return (getattr(self.unet.config, "time_embedding_type", "positional") != "fourier"
                and not any(hasattr(block, "skip_conv") for block in self.unet.up_blocks))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # -- the hook -----------------------------------------------------------------------------------
    def _hook(self, module, inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        call = self._call
        if self.override.replacement is None and self.controller is not None:
            if call.get("share"):
                h = _duplicate_chunks(h, len(call["cond_or_uncond"]))
            h = self.controller(h, call["timestep"], call["cond_or_uncond"], call["flags"], call["sigma"])
        h = self.override(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def _timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        t = self.schedule.timestep(sigma.double())
        return torch.where((t - t.round()).abs() < 1e-4, t.round(), t)

    def _unet_output(self, x: torch.Tensor, sigma: torch.Tensor, flags: dict[str, Any],
                     cond: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet's raw output for x (k-diffusion form) at sigma, rows batched for CFG.

        A split call ``[x; x]`` (the asymmetric step) runs the encoder once on x: the mid-block hook duplicates
        h into [unshifted; shifted] rows and a pre-hook on every up block duplicates the skip connections and
        the other per-row inputs, so only the decoder runs twice.
        """
        check_finite(x, "the model input x")
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device="cpu").flatten()
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        half = x.shape[0] // 2
        share = (flags.get("split", False) and self.shares_encoder and self.override.replacement is None
                 and not self.override.stop
                 and x.shape[0] % 2 == 0 and torch.equal(x[:half], x[half:]) and torch.equal(sigma[:half], sigma[half:]))
        if share:
            x, sigma = x[:half], sigma[:half]
        alpha = self.schedule.alpha_bar(sigma)
        x_t = x * alpha.sqrt().to(x).view(-1, *[1] * (x.ndim - 1))
        t = self._timesteps(sigma)
        kwargs: dict[str, Any] = {}
        chunks = [COND]
        if self.conditional:
            cond = self.cond if cond is None else cond
            embeds = cond.expand(x.shape[0], *cond.shape[1:])
            if self.cfg_scale != 1.0:
                chunks = [UNCOND, COND]
                embeds = torch.cat([self.uncond.expand(x.shape[0], *self.uncond.shape[1:]), embeds])
                x_t, t = torch.cat([x_t, x_t]), torch.cat([t, t])
            kwargs["encoder_hidden_states"] = embeds.to(self.device, self.dtype)
        self._call = {"timestep": float(t[0]), "sigma": float(sigma[0]), "cond_or_uncond": chunks,
                      "flags": flags, "share": share}
        handles = [self.unet.mid_block.register_forward_hook(self._hook)]
        if share:
            rows = x_t.shape[0]
            handles += [block.register_forward_pre_hook(
                lambda module, args, kwargs: _duplicate_inputs(args, kwargs, rows, len(chunks)), with_kwargs=True)
                for block in self.unet.up_blocks]
        try:
            out = self.unet(x_t.to(self.device, self.dtype), t.to(self.device, torch.float32), **kwargs).sample
        finally:
            for handle in handles:
                handle.remove()
            self._call = {}
        return out.to(x.dtype)

    def _to_eps(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        if self.conditional and self.cfg_scale != 1.0:
            uncond, cond = out.chunk(2)
            out = uncond + self.cfg_scale * (cond - uncond)
        if self.prediction_type == "epsilon":
            return out
        alpha = self.schedule.alpha_bar(sigma).to(x).view(-1, *[1] * (x.ndim - 1))
        x_t = x * alpha.sqrt()
        return alpha.sqrt() * out + (1 - alpha).sqrt() * x_t

    # -- public calls -------------------------------------------------------------------------------
    def eps(self, x: torch.Tensor, sigma: torch.Tensor | float, model_options: dict | None = None,
            **extra: Any) -> torch.Tensor:
        """The (guided) noise prediction at x, sigma."""
        return self._to_eps(self._unet_output(x, sigma, hspace_flags(model_options)), x, sigma)

    def prediction(self, x: torch.Tensor, sigma: torch.Tensor | float,
                   model_options: dict | None = None) -> torch.Tensor:
        return self.eps(x, sigma, model_options)

    def encode(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """h = the mid-block output at x, sigma, computed by the encoder only (the decoder never runs).

        Conditional models use the cond embeddings, unguided. Differentiable in x (torch.func too).
        """
        with self._unguided():
            return self.override.encode(lambda: self._unet_output(x, sigma, {"shift": False, "capture": False}))

    def decode_from(self, x: torch.Tensor, sigma: torch.Tensor | float, h: torch.Tensor) -> torch.Tensor:
        """eps with the mid-block output replaced by ``h`` (skips from x untouched); differentiable in h.

        Unguided (cond rows only), so J = d eps / d h has one output per input row.
        """
        with self._unguided(), self.override.replacing(h):
            return self._to_eps(self._unet_output(x, sigma, {}), x, sigma)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one x."""
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return cfg.in_channels, size, size

    def h_shape(self) -> tuple[int, int, int]:
        """The per-image shape of h, found with one encoder pass on a zero input."""
        with torch.no_grad():
            return tuple(self.encode(torch.zeros(1, *self.sample_shape), 1.0).shape[1:])

    def fingerprint(self) -> dict[str, Any]:
        return model_fingerprint(self.unet, type(self.unet).__name__, self.h_shape())
