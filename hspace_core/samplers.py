"""Samplers in k-diffusion form: ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``.

``model(x, sigma, **extra_args)`` returns x0_hat for ``x = x0 + sigma * eps`` (the VE form), or for
``x = (1 - sigma) x0 + sigma * eps`` (a rectified-flow model, ``form=FLOW``): every sampler takes the model's
:class:`~hspace_core.schedule.NoiseForm` (``form``; by default the model's ``form`` attribute, else VE) and
writes its step as ``x = a(sigma) x0 + b(sigma) eps``, so one implementation serves both. The same functions run
on a :class:`~hspace_core.denoisers.DiffusersDenoiser` and inside ComfyUI (wrapped with
``comfy.samplers.KSAMPLER``). They talk to the bottleneck controller only through per-call flags
(:func:`with_hspace_flags`).

The asymmetric step in the flow form. Asyrp's step is ``x' = a' P(shifted) + b' D(unshifted)``: the clean-image
prediction of the shifted pass and the noise of the unshifted pass, each read off its own prediction through
the form's relation ``x = a x0 + b eps``, i.e. ``eps_u = (x - a x0_u) / b``. With ``a = 1 - sigma, b = sigma``:
``x' = (1 - sigma') x0_s + sigma' (x - (1 - sigma) x0_u) / sigma``. With Δh = 0 (``x0_s = x0_u``) this is the
flow DDIM step, which is also the Euler step of the velocity ``v = eps - x0 = (x - x0) / sigma``:
``x' = x + (sigma' - sigma) v``. Note that plugging the VE formula ``x0_s + sigma' (x - x0_u) / sigma`` into a
flow model would be wrong by ``sigma' (x0_u - x0_s)``: its "eps" is the velocity, whose x0 part must come from
the same pass as the x0 term.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from tqdm.auto import trange

from .checks import check_number
from .direction import check_finite
from .errors import HSpaceError
from .schedule import VE, NoiseForm, at_or_above, check_sigmas

MODES = ("asymmetric", "symmetric")
FLIPPED_ZERO = 1e-4  # what ComfyUI's FlipSigmas puts in place of a leading 0


def with_hspace_flags(extra_args: dict[str, Any] | None, **flags: Any) -> dict[str, Any]:
    """A copy of ``extra_args`` whose ``model_options["transformer_options"]["hspace"]`` holds ``flags``."""
    extra = dict(extra_args or {})
    model_options = dict(extra.get("model_options") or {})
    transformer_options = dict(model_options.get("transformer_options") or {})
    transformer_options["hspace"] = {**transformer_options.get("hspace", {}), **flags}
    model_options["transformer_options"] = transformer_options
    extra["model_options"] = model_options
    return extra


def ddim_sigmas(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of a DDIM step (Song et al. 2021, eq. 12) in k-diffusion form.

    With ``a = 1 / (1 + sigma^2)``: ``s = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')`` is DDIM's noise
    std for x_t; divided by sqrt(a') it becomes ``sigma_up``, and ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``,
    so that ``x' = x0 + sigma_down * eps + sigma_up * z``. eta = 1 gives the DDPM posterior std.
    The VE case of :meth:`~hspace_core.schedule.NoiseForm.ddim_coefficients`.
    """
    return step_coefficients(VE, sigma, sigma_next, eta)[1:]


def step_coefficients(form: NoiseForm, sigma: float, sigma_next: float, eta: float) -> tuple[float, float, float]:
    """(a', b_down, b_up) of the DDIM step ``x' = a' x0 + b_down eps + b_up z`` in ``form`` (eta checked)."""
    check_number(eta, "eta", 0.0, 1.0)
    return form.ddim_coefficients(sigma, sigma_next, eta)


def model_form(model: Any, form: NoiseForm | None) -> NoiseForm:
    """The noise form a sampler uses: the one given, else the model's ``form`` attribute, else VE."""
    form = form if form is not None else getattr(model, "form", VE)
    if not isinstance(form, NoiseForm):
        raise HSpaceError(f"form: a NoiseForm (schedule.VE or schedule.FLOW) expected, got {form!r}")
    return form


def step_etas(sigmas: torch.Tensor, eta: float = 0.0, sigma_boost: float = 0.0, eta_boost: float = 1.0) -> list[float]:
    """eta per step: ``eta_boost`` on the steps that start below ``sigma_boost`` (Asyrp's quality boosting)."""
    return [eta if at_or_above(s, sigma_boost) else eta_boost for s in sigmas[:-1]]


def ddpm_noises(shape: Sequence[int], sigmas: torch.Tensor, etas: float | Sequence[float], seed: int,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                form: NoiseForm = VE) -> list[torch.Tensor]:
    """The additive noise term ``sigma_up * z`` of every step, drawn reproducibly from ``seed``.

    Passing the same list to two runs (plain and edited) fixes the noise, as Haas et al. do.
    """
    sigmas = check_sigmas(sigmas)
    etas = [float(etas)] * (len(sigmas) - 1) if isinstance(etas, (int, float)) else list(etas)
    generator = torch.Generator().manual_seed(int(seed))
    noises = []
    for i, eta in enumerate(etas):
        z = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
        sigma_up = step_coefficients(form, float(sigmas[i]), float(sigmas[i + 1]), eta)[2]
        noises.append((sigma_up * z).to(device, dtype))
    return noises


def _noise_for(i: int, x: torch.Tensor, sigma_up: float, noises: Sequence[torch.Tensor] | None,
               generator: torch.Generator | None) -> torch.Tensor | float:
    if noises is not None:
        if i >= len(noises):
            raise HSpaceError(f"one noise term per step expected: step {i} but only {len(noises)} terms")
        return noises[i].to(x)
    if sigma_up == 0:
        return 0.0
    z = torch.randn(x.shape, generator=generator, dtype=torch.float32) if generator else torch.randn(x.shape)
    return sigma_up * z.to(x)


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _check(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    check_finite(x, "the sampler input x")
    return check_sigmas(sigmas)


def _eps(form: NoiseForm, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noise of ``x = a x0 + b eps`` at sigma (VE: ``(x - x0) / sigma``)."""
    a = form.coefficients(float(sigma))[0]
    return (x - a * x0) / sigma


def _predict(model: Callable, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict, shift: str,
             form: NoiseForm = VE) -> tuple:
    """(x0 for P_t, eps for D_t) under the edit mode of this step: "as-is" (the flags of ``extra_args``),
    "none", "symmetric", "asymmetric" (one batched call) or "asymmetric-sequential" (two calls)."""
    s_in = x.new_ones([x.shape[0]])
    if shift == "as-is":
        x0 = model(x, sigma * s_in, **extra_args)
        return x0, _eps(form, x, x0, sigma)
    if shift == "asymmetric":
        both = model(torch.cat([x, x]), sigma * torch.cat([s_in, s_in]), **with_hspace_flags(extra_args, split=True))
        x0_unshifted, x0_shifted = both.chunk(2)
        return x0_shifted, _eps(form, x, x0_unshifted, sigma)
    if shift == "asymmetric-sequential":
        x0_unshifted = model(x, sigma * s_in, **with_hspace_flags(extra_args, shift=False))
        x0_shifted = model(x, sigma * s_in, **with_hspace_flags(extra_args, shift=True, capture=False))
        return x0_shifted, _eps(form, x, x0_unshifted, sigma)
    x0 = model(x, sigma * s_in, **with_hspace_flags(extra_args, shift=shift == "symmetric"))
    return x0, _eps(form, x, x0, sigma)


def _run(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, callback: Callable | None,
         disable: bool | None, edits: Sequence[str], etas: Sequence[float],
         noises: Sequence[torch.Tensor] | None, seed: int | None, form: NoiseForm = VE) -> torch.Tensor:
    """The DDIM loop shared by the samplers: per step an edit mode (see :func:`_predict`) and an eta."""
    generator = _generator(seed)
    for i in trange(len(sigmas) - 1, disable=disable):
        x0, eps = _predict(model, x, sigmas[i].to(x), extra_args, edits[i], form)
        a_next, b_down, b_up = step_coefficients(form, float(sigmas[i]), float(sigmas[i + 1]), etas[i])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0})
        x = a_next * x0 + b_down * eps + _noise_for(i, x, b_up, noises, generator)
    return x


@torch.no_grad()
def sample_asyrp(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None, mode: str = "asymmetric",
                 sigma_edit: float = 0.0, sigma_boost: float = 0.0, eta: float = 0.0, eta_boost: float = 1.0,
                 noises: Sequence[torch.Tensor] | None = None, seed: int | None = None,
                 batched: bool | None = None, shifts: Callable[[float], bool] | None = None,
                 form: NoiseForm | None = None) -> torch.Tensor:
    """The asymmetric reverse process of Kwon et al. 2023 (Asyrp, §3.2 and eq. 4), with quality boosting.

    On steps with ``sigma >= sigma_edit`` (the edit window [T, t_edit]) the predicted x0 comes from the
    shifted bottleneck and the direction term from the unshifted one:
    ``x_next = x0_shifted + sigma_down * eps_unshifted + noise``. ``mode="symmetric"`` shifts both terms
    (Haas et al.). On steps with ``sigma < sigma_boost`` nothing is shifted and eta is ``eta_boost``
    (eta = 1, the stochastic DDPM step, in the paper). Elsewhere plain DDIM with ``eta``.

    ``batched``: get both predictions from one call on ``[x; x]`` (a diffusers UNet then runs its encoder
    once), or from two calls. The default batches everywhere: on 2 CPU cores the batched call measured
    faster than or equal to two calls (benchmarks/bench_engine.py, ENGINE.md), and on accelerators the
    larger batch is cheaper still.

    ``shifts``: whether the bottleneck shifts anything at a sigma (e.g. ``lambda s:
    controller.shifts_at(float(schedule.timestep(s)))``, :meth:`~hspace_core.bottleneck.Bottleneck.shifts_at`);
    when not given, a callable published as ``shifts_at`` in the hspace flags of ``extra_args`` (see
    :func:`with_hspace_flags`) is used. Edit-window steps where nothing shifts run one plain pass, so an edit
    of strength 0 reproduces plain sampling bitwise on every path (the batched call on ``[x; x]`` computes the
    decoder on twice the rows, which can change the last bits).

    ``form``: the model's noise form (see the module docstring for the step in the flow form).
    """
    if mode not in MODES:
        raise HSpaceError(f"mode must be one of {MODES}, got {mode!r}")
    sigmas = _check(x, sigmas)
    extra_args = extra_args or {}
    if shifts is None:
        shifts = ((extra_args.get("model_options") or {}).get("transformer_options") or {}).get(
            "hspace", {}).get("shifts_at")
    if batched is None:
        batched = True
    if mode == "asymmetric" and not batched:
        mode = "asymmetric-sequential"

    def edited(sigma: float) -> bool:
        in_window = at_or_above(sigma, sigma_edit) and at_or_above(sigma, sigma_boost)
        return in_window and (shifts is None or bool(shifts(sigma)))

    edits = [mode if edited(float(s)) else "none" for s in sigmas[:-1]]
    extra_args = with_hspace_flags(extra_args, steps=len(sigmas) - 1, asymmetric=mode != "symmetric")
    return _run(model, x, sigmas, extra_args, callback, disable, edits,
                step_etas(sigmas, eta, sigma_boost, eta_boost), noises, seed, model_form(model, form))


@torch.no_grad()
def sample_ddim(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callable | None = None, disable: bool | None = None, eta: float = 0.0,
                noises: Sequence[torch.Tensor] | None = None, seed: int | None = None,
                form: NoiseForm | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): ``x_next = x0 + sigma_down * eps + sigma_up * z``; eta = 0 is deterministic.

    In the flow form ``x_next = (1 - sigma_next) x0 + b_down eps + b_up z`` (eta = 0: the Euler step of the
    velocity, ComfyUI's ``euler`` on a CONST model). A model patched with a direction is edited on every call
    (the symmetric edit of Haas et al.).
    """
    sigmas = _check(x, sigmas)
    steps = len(sigmas) - 1
    return _run(model, x, sigmas, extra_args or {}, callback, disable, ["as-is"] * steps, [eta] * steps, noises, seed,
                model_form(model, form))


@torch.no_grad()
def invert_ddim(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callable | None = None, disable: bool | None = None,
                form: NoiseForm | None = None) -> torch.Tensor:
    """Deterministic DDIM inversion: the DDIM step along an increasing schedule, the model at the lower sigma.

    Use :func:`~hspace_core.schedule.inversion_sigmas` to invert exactly the pairs a generation grid uses.
    A leading sigma <= 1e-4 stands for 0, the clean image (ComfyUI's FlipSigmas turns a generation schedule
    ``[s_N .. s_1, 0]`` into ``[1e-4, s_1 .. s_N]``): it is dropped, so the image counts as x at ``s_1`` and
    the pairs are those of the generation schedule. The bottleneck is never shifted here; a capturing
    controller records h along the way.
    """
    sigmas = _check(x, sigmas)
    if sigmas[0] <= FLIPPED_ZERO and len(sigmas) > 2:
        sigmas = sigmas[1:]
    if not (sigmas[1:] > sigmas[:-1]).all() or sigmas[0] <= 0:
        raise HSpaceError(f"an increasing schedule of positive sigmas expected for inversion, got {sigmas.tolist()}")
    form = model_form(model, form)
    extra_args = with_hspace_flags(extra_args, shift=False)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        x0 = model(x, sigmas[i].to(x) * s_in, **extra_args)
        eps = _eps(form, x, x0, sigmas[i].to(x))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x0})
        x = form.coefficients(float(sigmas[i + 1]))[0] * x0 + sigmas[i + 1].to(x) * eps
    return x


@torch.no_grad()
def invert_edit_friendly(model: Callable, x0: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                         callback: Callable | None = None, disable: bool | None = None, eta: float = 1.0,
                         seed: int | None = None, form: NoiseForm | None = None
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov, Michaeli 2023, Algorithm 1).

    Every noisy ``x_i = a_i x0 + b_i n_i`` (VE: ``x0 + sigma_i n_i``) is drawn independently; the noise terms are
    then solved for, ``noise_i = x_{i+1} - a_{i+1} x0_hat(x_i) - b_down * eps(x_i)``, so that
    ``sample_ddim(model, x_T, sigmas, eta=eta, noises=noises)`` reproduces ``x0`` (generation sigmas ending
    in 0; the last term is the residual of the deterministic final step). Returns ``(x_T, noises)``.
    """
    sigmas = _check(x0, sigmas)
    if sigmas[-1] != 0 or not (sigmas[1:] < sigmas[:-1]).all():
        raise HSpaceError("a decreasing generation schedule ending in 0 expected for edit-friendly inversion")
    if eta <= 0:
        raise HSpaceError(f"edit-friendly inversion needs eta > 0, got {eta}")
    form = model_form(model, form)
    generator = _generator(seed)
    noisy = [form.coefficients(float(s))[0] * x0 + float(s) * torch.randn(x0.shape, generator=generator).to(x0)
             for s in sigmas[:-1]] + [x0]
    extra_args = with_hspace_flags(extra_args, shift=False)
    s_in = x0.new_ones([x0.shape[0]])
    noises = []
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(noisy[i], sigmas[i].to(x0) * s_in, **extra_args)
        eps = _eps(form, noisy[i], denoised, sigmas[i].to(x0))
        a_next, b_down, _ = step_coefficients(form, float(sigmas[i]), float(sigmas[i + 1]), eta)
        if callback is not None:
            callback({"x": noisy[i], "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        noises.append(noisy[i + 1] - a_next * denoised - b_down * eps)
    return noisy[0], noises
