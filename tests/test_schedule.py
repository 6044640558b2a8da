import math

import pytest
import torch

from hspace_core.errors import HSpaceError
from hspace_core.samplers import ddim_sigmas
from hspace_core.schedule import VPSchedule, asyrp_timesteps, check_sigmas, inversion_sigmas, leading_timesteps


def test_asyrp_grid_matches_the_official_code():
    grid = asyrp_timesteps(40)
    assert grid[:3] == [999, 973, 947] and grid[-5:] == [102, 76, 51, 25, 0] and len(grid) == 40


def test_leading_grid_is_diffusers_ddim():
    assert leading_timesteps(10) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]


def test_sigma_timestep_round_trip():
    schedule = VPSchedule.linear()
    t = torch.tensor([0.0, 1.5, 250.25, 999.0])
    assert torch.allclose(schedule.timestep(schedule.sigma(t)), t.double(), atol=1e-6)
    assert torch.allclose(schedule.sigma(torch.arange(1000.0)), schedule.sigmas, rtol=1e-12)


def test_sd_schedule_matches_comfyui_sigma_range():
    schedule = VPSchedule.scaled_linear()
    assert schedule.sigmas[0] == pytest.approx(0.0292, abs=1e-4)
    assert schedule.sigmas[-1] == pytest.approx(14.6146, abs=1e-3)


def test_grid_consistency_between_inversion_and_generation():
    schedule = VPSchedule.linear()
    generation = schedule.sigmas_for(asyrp_timesteps(40))
    inversion = inversion_sigmas(generation)
    assert inversion[-1] == generation[0]
    assert len(inversion) - 1 == 39 and len(generation) - 1 == 40
    pairs_gen = {(float(a), float(b)) for a, b in zip(generation[:-2], generation[1:-1])}
    pairs_inv = {(float(b), float(a)) for a, b in zip(inversion[:-1], inversion[1:])}
    assert pairs_gen == pairs_inv


def test_eta_one_gives_the_ddpm_posterior_std():
    schedule = VPSchedule.linear()
    a = schedule.alphas_cumprod
    betas = 1 - a[1:] / a[:-1]
    for t in (1, 10, 500, 999):
        posterior_var = (1 - a[t - 1]) / (1 - a[t]) * betas[t - 1]
        sigma_up = ddim_sigmas(float(schedule.sigmas[t]), float(schedule.sigmas[t - 1]), 1.0)[1]
        assert (sigma_up * math.sqrt(a[t - 1])) ** 2 == pytest.approx(float(posterior_var), rel=1e-9)


@pytest.mark.parametrize("bad", [[], [1.0], [1.0, float("nan")], [1.0, 2.0, 0.5], [[1.0, 0.0]]])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(HSpaceError):
        check_sigmas(torch.tensor(bad))


def test_timesteps_outside_the_schedule_are_refused():
    with pytest.raises(HSpaceError, match="lie in"):
        VPSchedule.linear().sigmas_for([1200, 500])
    with pytest.raises(HSpaceError, match="empty"):
        VPSchedule.linear().sigmas_for([])
