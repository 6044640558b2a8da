"""The samplers in the rectified-flow form x = (1 - sigma) x0 + sigma eps (ALGORITHMS.md §6 on analytic models)."""
import math

import pytest
import torch

from hspace_core.samplers import invert_ddim, invert_edit_friendly, sample_asyrp, sample_ddim
from hspace_core.schedule import FLOW, FlowSchedule, inversion_sigmas
from hspace_core.denoisers import hspace_flags


def shifted_rows(model_options, rows):
    """1 on the rows a sampler's flags mark as shifted: the second half of a split call, else all or none."""
    flags = hspace_flags(model_options)
    if flags.get("split"):
        return torch.cat([torch.zeros(rows // 2), torch.ones(rows // 2)]).double()
    return torch.full((rows,), float(flags.get("shift", True)), dtype=torch.float64)


class FlowOracle:
    """The exact flow denoiser for data ~ N(mu, std^2 I): E[x0 | x] with x = (1 - sigma) x0 + sigma eps;
    on calls the sampler marks as shifted it adds ``shift`` to x0 (an edited pass)."""

    form = FLOW

    def __init__(self, mu: float = 0.0, std: float = 1.0, shift: torch.Tensor | None = None):
        self.mu, self.std, self.shift = mu, std, shift

    def __call__(self, x, sigma, model_options=None, **extra):
        s = sigma.view(-1, *[1] * (x.ndim - 1)).to(x)
        a = 1 - s
        x0 = self.mu + a * self.std ** 2 / (a ** 2 * self.std ** 2 + s ** 2) * (x - a * self.mu)
        if self.shift is None:
            return x0
        return x0 + shifted_rows(model_options, x.shape[0]).view(-1, *[1] * (x.ndim - 1)) * self.shift


def test_flow_schedule_grid_and_shift():
    plain, shifted = FlowSchedule().sigmas(4), FlowSchedule(shift=3.0).sigmas(4)
    assert torch.allclose(plain, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > plain[1:-1]).all()
    mu = math.log(3.0)  # Flux's exponential time shift exp(mu) / (exp(mu) + 1 / t - 1) is the same curve
    assert float(shifted[2]) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 0.5 - 1), abs=1e-12)
    schedule = FlowSchedule(shift=3.0)
    assert float(schedule.sigma(schedule.timestep(0.37))) == pytest.approx(0.37, abs=1e-12)


def test_straight_paths_are_inverted_exactly():
    """A single data point: the velocity is constant along each path, so Euler / DDIM is exact."""
    model = FlowOracle(mu=0.3, std=0.0)
    x0 = torch.full((2, 3, 4, 4), 0.3, dtype=torch.float64)
    sigmas = FlowSchedule(shift=3.0).sigmas(10)
    x_T = invert_ddim(model, x0, inversion_sigmas(sigmas), disable=True)
    assert (sample_ddim(model, x_T, sigmas[:-1], disable=True) - x0).abs().max() < 1e-12


def test_flow_round_trip_error_falls_with_the_step_count():
    torch.manual_seed(0)
    model = FlowOracle(mu=0.5, std=0.3)
    x0 = 0.5 + 0.3 * torch.randn(1, 2000, dtype=torch.float64)
    errors = {}
    for n in (10, 100, 1000):
        sigmas = FlowSchedule(shift=3.0).sigmas(n)
        x_T = invert_ddim(model, x0, inversion_sigmas(sigmas), disable=True)
        errors[n] = float((sample_ddim(model, x_T, sigmas, disable=True) - x0).norm() / x0.norm())
    assert errors[10] > errors[100] > errors[1000]
    assert errors[1000] < 5e-3 and errors[10] / errors[1000] > 50  # measured 3.9e-3 and 69: first order


def test_flow_edit_friendly_inversion_reproduces_the_input():
    model = FlowOracle(mu=0.1, std=0.5)
    x0 = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    sigmas = FlowSchedule(shift=3.0).sigmas(20)
    x_T, noises = invert_edit_friendly(model, x0, sigmas, eta=1.0, seed=0, disable=True)
    x_rec = sample_ddim(model, x_T, sigmas, eta=1.0, noises=noises, disable=True)
    assert float((x_rec - x0).norm() / x0.norm()) < 1e-12


@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.8), (0.6, 0.3), (0.2, 0.05)])
def test_flow_eta_one_is_the_posterior_of_the_flow_process(sigma, sigma_next):
    """eta = 1: b_up^2 is the variance of q(x' | x, x0) for x = a x0 + b eps, derived from the forward
    transition x = (a / a') x' + r xi, r^2 = b^2 - (a b' / a')^2: Var = b'^2 r^2 / b^2."""
    a_next, b_down, b_up = FLOW.ddim_coefficients(sigma, sigma_next, 1.0)
    a, b, b_next = 1 - sigma, sigma, sigma_next
    r2 = b ** 2 - (a * b_next / (1 - sigma_next)) ** 2
    assert a_next == pytest.approx(1 - sigma_next)
    assert b_up ** 2 == pytest.approx(b_next ** 2 * r2 / b ** 2, rel=1e-12)
    assert b_down ** 2 + b_up ** 2 == pytest.approx(b_next ** 2, rel=1e-12)


@pytest.mark.parametrize("batched", [True, False])
def test_flow_asymmetric_and_symmetric_steps_against_the_vp_equivalent(batched):
    """One step from sigma to sigma', checked through the VP process the flow form is a rescaling of:
    x_t = x / c, alpha_bar = (1 - sigma)^2 / c^2, c = sqrt((1 - sigma)^2 + sigma^2), Asyrp's VP step
    x_t' = sqrt(A') x0_shifted + sqrt(1 - A') eps_unshifted, then x' = c' x_t'."""
    torch.manual_seed(1)
    shift = 0.2 * torch.randn(1, 3, 4, 4, dtype=torch.float64)
    edited, plain = FlowOracle(0.2, 0.7, shift), FlowOracle(0.2, 0.7)
    sigma, sigma_next = 0.7, 0.55
    sigmas = torch.tensor([sigma, sigma_next], dtype=torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    asym = sample_asyrp(edited, x, sigmas, batched=batched, disable=True)
    sym = sample_asyrp(edited, x, sigmas, mode="symmetric", disable=True)
    none = sample_ddim(plain, x, sigmas, disable=True)

    def scale(s):
        return math.sqrt((1 - s) ** 2 + s ** 2)

    big_a, big_a_next = ((1 - s) ** 2 / scale(s) ** 2 for s in (sigma, sigma_next))
    x0_u = plain(x, torch.tensor([sigma]))
    x0_s = x0_u + shift
    x_t = x / scale(sigma)
    eps_u = (x_t - math.sqrt(big_a) * x0_u) / math.sqrt(1 - big_a)
    eps_s = (x_t - math.sqrt(big_a) * x0_s) / math.sqrt(1 - big_a)
    expected_asym = scale(sigma_next) * (math.sqrt(big_a_next) * x0_s + math.sqrt(1 - big_a_next) * eps_u)
    expected_sym = scale(sigma_next) * (math.sqrt(big_a_next) * x0_s + math.sqrt(1 - big_a_next) * eps_s)
    assert torch.allclose(asym, expected_asym, atol=1e-12)
    assert torch.allclose(sym, expected_sym, atol=1e-12)
    # the coefficients on the x0 shift: (1 - sigma') asymmetric, (1 - sigma' / sigma) symmetric (the Euler step)
    assert torch.allclose(asym - none, (1 - sigma_next) * shift.expand_as(x), atol=1e-12)
    assert torch.allclose(sym - none, (1 - sigma_next / sigma) * shift.expand_as(x), atol=1e-12)


def test_edit_window_in_model_timesteps_on_a_flow_schedule():
    """t_edit = 500 on a flow model is sigma 0.5: only the steps starting at sigma >= 0.5 are edited."""
    from hspace_core.schedule import window_sigmas

    schedule = FlowSchedule(shift=3.0)
    sigmas = schedule.sigmas(6)
    sigma_edit, sigma_boost = window_sigmas(schedule, sigmas, t_edit=500)
    assert sigma_edit == pytest.approx(0.5) and sigma_boost == 0
    shift = torch.full((1, 1, 2, 2), 0.1, dtype=torch.float64)
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    calls = []
    edited = FlowOracle(0.0, 1.0, shift)

    def record(x, sigma, model_options=None, **extra):
        calls.append((float(sigma[0]), shifted_rows(model_options, x.shape[0]).tolist()))
        return edited(x, sigma, model_options)

    sample_asyrp(record, x, sigmas, sigma_edit=sigma_edit, batched=True, disable=True, form=FLOW)
    edited_steps = [sigma for sigma, rows in calls if rows == [0.0, 1.0]]
    assert edited_steps == [float(s) for s in sigmas[:-1] if s >= 0.5] and len(edited_steps) < len(sigmas) - 1
