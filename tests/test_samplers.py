import math

import pytest
import torch

from hspace_core.bottleneck import Bottleneck, EditSpec, FunctionEdit
from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError
from hspace_core.samplers import (ddpm_noises, invert_ddim, invert_edit_friendly, sample_asyrp, sample_ddim,
                                  step_etas)
from hspace_core.schedule import VPSchedule, asyrp_timesteps, inversion_sigmas, window_sigmas
from tiny import ConstantEps, GaussianOracle, tiny_denoiser

SCHEDULE = VPSchedule.linear()


def grid(n):
    return SCHEDULE.sigmas_for(asyrp_timesteps(n))


def round_trip(model, x0, n):
    sigmas = grid(n)
    x_T = invert_ddim(model, x0, inversion_sigmas(sigmas), disable=True)
    return sample_ddim(model, x_T, sigmas[:-1], disable=True)  # back to x at the smallest sigma


def test_exact_round_trip_with_constant_eps():
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    model = ConstantEps(torch.randn(1, 3, 4, 4, dtype=torch.float64))
    for n in (10, 40):
        assert (round_trip(model, x0, n) - x0).abs().max() < 1e-12


def test_ddim_round_trip_error_falls_like_one_over_n():
    x0 = torch.randn(1, 2000, dtype=torch.float64)
    model = GaussianOracle()
    errors = {}
    for n in (10, 40, 100, 1000):
        sigmas = grid(n)
        x_T = invert_ddim(model, x0, inversion_sigmas(sigmas), disable=True)
        x_rec = sample_ddim(model, x_T, sigmas, disable=True)
        errors[n] = float((x_rec - x0).norm() / x0.norm())
    assert errors[10] > errors[40] > errors[100] > errors[1000]
    assert errors[1000] < 5e-3 and errors[40] / errors[1000] > 10


def test_general_gaussian_oracle_round_trip_also_converges():
    x0 = 0.5 + 0.3 * torch.randn(1, 1000, dtype=torch.float64)
    model = GaussianOracle(mu=0.5, std=0.3)
    errs = []
    for n in (10, 100, 1000):
        sigmas = grid(n)
        x_rec = sample_ddim(model, invert_ddim(model, x0, inversion_sigmas(sigmas), disable=True), sigmas, disable=True)
        errs.append(float((x_rec - x0).norm() / x0.norm()))
    assert errs[0] > errs[1] > errs[2]


def test_stochastic_generation_is_deterministic_given_the_noise():
    model = tiny_denoiser()
    sigmas = grid(10)
    x = torch.randn(2, 3, 8, 8) * float(sigmas[0])
    noises = ddpm_noises(x.shape, sigmas, 1.0, seed=3)
    a = sample_ddim(model, x, sigmas, eta=1.0, noises=noises, disable=True)
    b = sample_ddim(model, x, sigmas, eta=1.0, noises=noises, disable=True)
    c = sample_ddim(model, x, sigmas, eta=1.0, seed=3, disable=True)
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)


def test_edit_friendly_inversion_reproduces_the_input_on_a_random_unet():
    model = tiny_denoiser(seed=1)
    sigmas = grid(20)
    x0 = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    for dtype, bound in ((torch.float64, 1e-5), (torch.float32, 2e-4)):
        # float32 states at sigma_max ~ 157 keep ~1e-5 absolute precision, hence the looser float32 bound
        x_T, noises = invert_edit_friendly(model, x0.to(dtype), sigmas, eta=1.0, seed=0, disable=True)
        x_rec = sample_ddim(model, x_T, sigmas, eta=1.0, noises=noises, disable=True)
        assert x_rec.dtype == dtype
        assert float((x_rec.double() - x0).norm() / x0.norm()) <= bound


def direction_for(model, value=1.0, seed=0):
    torch.manual_seed(seed)
    return Direction(value * torch.randn(model.h_shape()))


@pytest.mark.parametrize("batched", [True, False])
def test_asyrp_with_zero_shift_reproduces_ddim(batched):
    model = tiny_denoiser()
    sigmas = grid(10)
    x = torch.randn(2, 3, 8, 8) * float(sigmas[0])
    plain = sample_ddim(model, x, sigmas, disable=True)
    with model.attached(Bottleneck([EditSpec(direction_for(model, 0.0))])):
        edited = sample_asyrp(model, x, sigmas, batched=batched, disable=True)
    assert (edited - plain).abs().max() <= 1e-6 * plain.abs().max()  # batch 2B vs B: float32 rounding
    with model.attached(Bottleneck([EditSpec(direction_for(model))])):
        outside = sample_asyrp(model, x, sigmas, sigma_edit=float(sigmas[0]) * 2, disable=True)
    assert torch.equal(outside, plain)


def test_asyrp_with_boost_reproduces_the_same_stochastic_run():
    model = tiny_denoiser()
    sigmas = grid(10)
    x = torch.randn(1, 3, 8, 8) * float(sigmas[0])
    sigma_boost = float(SCHEDULE.sigma(300))
    noises = ddpm_noises(x.shape, sigmas, step_etas(sigmas, 0.0, sigma_boost), seed=1)
    with model.attached(Bottleneck([EditSpec(direction_for(model, 0.0))])):
        a = sample_asyrp(model, x, sigmas, sigma_boost=sigma_boost, noises=noises, disable=True)
    b = sample_asyrp(model, x, sigmas, sigma_boost=sigma_boost, noises=noises, disable=True)
    assert torch.allclose(a, b, atol=1e-5)


def one_step(model, x, sigmas, mode, shift, batched=True):
    with model.attached(Bottleneck([EditSpec(shift)])):
        if mode == "none":
            return sample_ddim(model, x, sigmas, extra_args={"model_options": {"transformer_options": {"hspace": {"shift": False}}}}, disable=True)
        return sample_asyrp(model, x, sigmas, mode=mode, batched=batched, disable=True)


@pytest.mark.parametrize("batched", [True, False])
def test_asymmetric_and_symmetric_coefficients(batched):
    model = tiny_denoiser()
    t, t_next = 999, 973
    sigmas = torch.stack([SCHEDULE.sigmas[t], SCHEDULE.sigmas[t_next]])
    x = torch.randn(1, 3, 8, 8) * float(sigmas[0])
    shift = direction_for(model, 5.0)
    shift = shift.with_delta(shift.delta, n_train_steps=1)  # calibrated for this one-step run: no step factor
    plain = one_step(model, x, sigmas, "none", shift)
    asym = one_step(model, x, sigmas, "asymmetric", shift, batched)
    sym = one_step(model, x, sigmas, "symmetric", shift)
    with model.attached(Bottleneck([EditSpec(shift)])):
        eps_shift = model.eps(x, sigmas[0])
    eps = model.eps(x, sigmas[0])
    a, a_next = SCHEDULE.alphas_cumprod[t], SCHEDULE.alphas_cumprod[t_next]
    coef_asym = -math.sqrt(a_next) * math.sqrt(1 - a) / math.sqrt(a)
    coef_sym = math.sqrt(1 - a_next) + coef_asym
    assert coef_asym == pytest.approx(-1.296, abs=1e-3) and coef_sym == pytest.approx(-0.296, abs=1e-3)
    d_eps = eps_shift - eps
    unscale = math.sqrt(a_next)
    assert torch.allclose((asym - plain) * unscale, coef_asym * d_eps, atol=1e-4)
    assert torch.allclose((sym - plain) * unscale, coef_sym * d_eps, atol=1e-4)
    assert d_eps.abs().max() > 1e-2


class FlagRecorder:
    """An analytic denoiser that records, per call, the sigma and the hspace flags a sampler set."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, model_options=None, **extra):
        flags = (model_options or {}).get("transformer_options", {}).get("hspace", {})
        self.calls.append((float(sigma.flatten()[0]), dict(flags), x.shape[0]))
        return x / (1 + sigma.view(-1, *[1] * (x.ndim - 1)) ** 2)


def test_edit_window_and_boost_steps():
    sigmas = grid(20)
    timesteps = asyrp_timesteps(20)
    sigma_edit, sigma_boost = window_sigmas(SCHEDULE, sigmas, t_edit=500, t_boost=200)
    model = FlagRecorder()
    x = torch.randn(1, 4)
    sample_asyrp(model, x, sigmas, sigma_edit=sigma_edit, sigma_boost=sigma_boost, seed=0, batched=True,
                 disable=True)
    edited = [t for t, (s, flags, rows) in zip(timesteps, model.calls) if flags.get("split")]
    assert edited == [t for t in timesteps if t >= 500]
    assert all(rows == 2 for s, flags, rows in model.calls if flags.get("split"))
    etas = step_etas(sigmas, 0.0, sigma_boost)
    assert [t for t, e in zip(timesteps, etas) if e == 1.0] == [t for t in timesteps if t < 200]
    boosted_calls = [flags for t, (s, flags, rows) in zip(timesteps, model.calls) if t < 200]
    assert all(flags.get("shift") is False and not flags.get("split") for flags in boosted_calls)


def test_window_outside_the_schedule_is_refused():
    sigmas = SCHEDULE.sigmas_for([400, 300, 200])
    with pytest.raises(HSpaceError, match="outside this schedule"):
        window_sigmas(SCHEDULE, sigmas, t_edit=600)
    with pytest.raises(HSpaceError, match="t_edit must lie"):
        window_sigmas(SCHEDULE, sigmas, t_edit=1500)
    with pytest.raises(HSpaceError, match="must not exceed"):
        window_sigmas(SCHEDULE, sigmas, t_edit=100, t_boost=200)


def test_step_count_scaling_and_multi_attribute_coefficients():
    model = tiny_denoiser()
    d = direction_for(model)
    trained = d.with_delta(d.delta, n_train_steps=40)
    h = torch.zeros(1, *model.h_shape())
    asymmetric = {"steps": 1000, "asymmetric": True}
    assert torch.allclose(Bottleneck([EditSpec(trained, 2.0)])(h, 500.0, flags=asymmetric), 2.0 * 0.04 * d.delta)
    symmetric = Bottleneck([EditSpec(trained, 2.0)])(h, 500.0, flags={"steps": 1000})
    assert torch.allclose(symmetric, 2.0 * d.delta)  # the symmetric step takes no step-count factor
    controller = Bottleneck([EditSpec(trained, a) for a in (1.0, -0.5, 2.0)])
    expected = sum(a * d.delta for a in (1.0, -0.5, 2.0)) / math.sqrt(3)
    assert torch.allclose(controller(h, 500.0, flags={"steps": 40, "asymmetric": True}), expected, atol=1e-6)


def test_a_global_direction_without_a_step_count_is_calibrated_for_20_steps():
    """Jacobian, supervised and global PCA directions record no step count: their strength means 'at 20 steps'
    (hspace's and KSampler's default), so at 40 asymmetric steps each step adds half, at 10 twice."""
    model = tiny_denoiser()
    d = direction_for(model)
    assert not d.per_timestep and "n_train_steps" not in d.meta
    h = torch.zeros(1, *model.h_shape())
    for steps, factor in ((20, 1.0), (40, 0.5), (10, 2.0)):
        shifted = Bottleneck([EditSpec(d, 1.0)])(h, 500.0, flags={"steps": steps, "asymmetric": True})
        assert torch.allclose(shifted, factor * d.delta)


def test_f_t_is_scaled_by_n_train_over_n_test_under_the_asymmetric_step():
    """Asyrp's code multiplies the DeltaBlock's output by n_train_step / n_test_step (hs_coeff[1])."""
    h = torch.randn(2, 4, 2, 2)
    edit = FunctionEdit(lambda rows, t: torch.ones_like(rows), strength=3.0, reference_steps=40)
    controller = Bottleneck(functions=[edit])
    assert torch.allclose(controller(h, 500.0, flags={"steps": 80, "asymmetric": True}), h + 1.5)
    assert torch.allclose(controller(h, 500.0, flags={"steps": 80}), h + 3.0)  # symmetric: no factor
    untrained = Bottleneck(functions=[FunctionEdit(lambda rows, t: torch.ones_like(rows), 3.0)])
    assert torch.allclose(untrained(h, 500.0, flags={"steps": 80, "asymmetric": True}), h + 3.0)


def test_nan_input_is_refused():
    with pytest.raises(HSpaceError, match="NaN"):
        sample_ddim(tiny_denoiser(), torch.full((1, 3, 8, 8), float("nan")), grid(5), disable=True)


def test_inversion_needs_an_increasing_schedule():
    with pytest.raises(HSpaceError, match="increasing"):
        invert_ddim(GaussianOracle(), torch.randn(1, 4), grid(5)[:-1], disable=True)


def test_inversion_accepts_a_flipsigmas_schedule():
    """ComfyUI's FlipSigmas gives [1e-4, s_1 .. s_N]: the same result as inverting [s_1 .. s_N]."""
    model = GaussianOracle()
    x0 = torch.randn(1, 100, dtype=torch.float64)
    sigmas = grid(10)
    flipped = sigmas.flip(0).clone()
    flipped[0] = 1e-4
    assert torch.equal(invert_ddim(model, x0, flipped, disable=True),
                       invert_ddim(model, x0, inversion_sigmas(sigmas), disable=True))


def test_sequential_asymmetric_step_makes_an_unshifted_then_a_shifted_call():
    sigmas = grid(10)
    sigma_edit = window_sigmas(SCHEDULE, sigmas, t_edit=500)[0]
    model = FlagRecorder()
    sample_asyrp(model, torch.randn(1, 4), sigmas, sigma_edit=sigma_edit, batched=False, disable=True)
    edited_steps = sum(t >= 500 for t in asyrp_timesteps(10))
    shifts = [flags.get("shift") for s, flags, rows in model.calls]
    assert shifts == [False, True] * edited_steps + [False] * (10 - edited_steps)
    assert all(rows == 1 for s, flags, rows in model.calls)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("zero_edit", ["strength", "window", "flags"])
def test_zero_edits_equal_plain_sampling_bitwise_on_every_path(batched, zero_edit):
    model = tiny_denoiser()
    sigmas = grid(10)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    plain = sample_ddim(model, x, sigmas, disable=True)
    if zero_edit == "window":  # a direction whose window no step falls in
        controller = Bottleneck([EditSpec(direction_for(model))], window=(2000.0, 3000.0))
    else:
        controller = Bottleneck([EditSpec(direction_for(model), 0.0)])
    shifts = lambda s: controller.shifts_at(float(SCHEDULE.timestep(s)))  # noqa: E731
    with model.attached(controller):
        if zero_edit == "flags":  # the predicate published in the hspace flags, as an adapter can
            from hspace_core.samplers import with_hspace_flags
            edited = sample_asyrp(model, x, sigmas, with_hspace_flags(None, shifts_at=shifts), batched=batched,
                                  disable=True)
        else:
            edited = sample_asyrp(model, x, sigmas, batched=batched, shifts=shifts, disable=True)
    assert torch.equal(edited, plain)


def test_shifts_at_reports_what_the_controller_would_add():
    model = tiny_denoiser()
    direction = direction_for(model)
    assert Bottleneck([EditSpec(direction, 1.0)]).shifts_at(500.0)
    assert not Bottleneck([EditSpec(direction, 0.0)]).shifts_at(500.0)
    assert not Bottleneck([EditSpec(direction, 1.0)], window=(0.0, 100.0)).shifts_at(500.0)
    assert not Bottleneck().shifts_at(500.0)
