"""Park's pullback geometry (ALGORITHMS.md §3; acceptance tests 16, 22-25)."""
import math

import pytest
import torch

from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.discovery.jacobian import JacobianOperator, batched, eps_of_h, subspace_iteration
from hspace_core.discovery.pullback import (curvedness, encoder_function, grassmann_distance, pullback_basis,
                                            transport_direction, x_space_guidance)
from hspace_core.errors import HSpaceError
from hspace_core.schedule import VPSchedule
from tests.tiny import tiny_cond_unet, tiny_denoiser

torch.set_num_threads(1)


def _encoder_like(seed=0):
    """x [2, 4, 4] -> h [3, 2, 2] with a decaying spectrum, per sample."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(12, 32, generator=g, dtype=torch.float64) * torch.logspace(0, -1.5, 32, dtype=torch.float64)
    return lambda x: torch.tanh(a @ x.reshape(32)).reshape(3, 2, 2)


def test_basis_matches_dense_svd_on_analytic_encoder():
    per_sample = _encoder_like()
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    basis = pullback_basis(batched(per_sample), x, num_vectors=4, tol=1e-10, max_iter=500)
    jac = torch.func.jacrev(lambda z: per_sample(z).flatten())(x).reshape(12, 32)
    u, s, vh = torch.linalg.svd(jac)
    torch.testing.assert_close(basis.singular_values, s[:4], rtol=1e-6, atol=0)
    assert grassmann_distance(basis.x_basis, vh[:4].reshape(4, 2, 4, 4)) < 1e-3
    assert grassmann_distance(basis.h_basis, u.T[:4].reshape(4, 3, 2, 2)) < 1e-3
    flat = basis.x_basis.reshape(4, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(4, dtype=flat.dtype), atol=1e-8, rtol=0)
    torch.testing.assert_close(basis.h_basis.reshape(4, -1).norm(dim=1), torch.ones(4, dtype=torch.float64))


def test_cluster_report_follows_the_known_gap_of_a_linear_encoder():
    # J = A with planted singular values: the ranks 3 and 5 end inside a pair (ratio 0.99, 0.967), 2 and 4 at a gap
    g = torch.Generator().manual_seed(4)
    sigma = torch.tensor([10, 9, 6, 5.94, 3, 2.9, 1, 0.8, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(32, 12, generator=g, dtype=torch.float64)).Q
    a = u @ torch.diag(sigma) @ v.T
    f = batched(lambda x: (a @ x.reshape(32)).reshape(3, 2, 2))
    x = torch.randn(2, 4, 4, dtype=torch.float64, generator=g)
    for n, inside in ((2, False), (3, True), (4, False), (5, True)):
        basis = pullback_basis(f, x, num_vectors=n, tol=1e-10, max_iter=300)
        assert math.isclose(basis.gap_ratio, float(sigma[n] / sigma[n - 1]), rel_tol=1e-6), n
        assert basis.in_cluster is inside, n


def test_basis_on_tiny_unet_encoder_matches_dense():
    den = tiny_denoiser()
    den.unet.requires_grad_(False)
    x = torch.randn(3, 8, 8)
    f = encoder_function(den, 2.0)
    basis = pullback_basis(f, x, num_vectors=3, min_iter=2, max_iter=400, tol=1e-5)
    dense = JacobianOperator(f, x).dense().double()  # [256, 192]
    _, s, vh = torch.linalg.svd(dense)
    torch.testing.assert_close(basis.singular_values.double(), s[:3], rtol=1e-4, atol=0)
    assert grassmann_distance(basis.x_basis, vh[:3].reshape(3, 3, 8, 8)) < 1e-3
    assert basis.h_basis.shape == (3, 16, 4, 4) and basis.x_basis.shape == (3, 3, 8, 8)


def test_grassmann_distance_properties():
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(20, 3, generator=g, dtype=torch.float64)).Q.T  # rows
    r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64)).Q
    assert grassmann_distance(u, r @ u) < 1e-7
    w = torch.linalg.qr(torch.randn(20, 3, generator=g, dtype=torch.float64)).Q.T
    torch.testing.assert_close(grassmann_distance(u, w), grassmann_distance(w, u))
    eye = torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(grassmann_distance(eye[:3], eye[3:]),
                               torch.tensor(math.sqrt(3) * math.pi / 2, dtype=torch.float64))
    small = torch.stack([eye[0], math.cos(1e-6) * eye[1] + math.sin(1e-6) * eye[5]])
    torch.testing.assert_close(grassmann_distance(eye[:2], small), torch.tensor(1e-6, dtype=torch.float64),
                               rtol=1e-6, atol=0)
    with pytest.raises(HSpaceError, match="same shape"):
        grassmann_distance(eye[:2], eye[:3])


def test_transport_direction():
    g = torch.Generator().manual_seed(1)
    h_basis = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64)).Q.T.reshape(3, 3, 2, 2)
    x_basis = torch.linalg.qr(torch.randn(32, 3, generator=g, dtype=torch.float64)).Q.T.reshape(3, 2, 4, 4)
    torch.testing.assert_close(transport_direction(h_basis[1], h_basis, x_basis), x_basis[1])
    v = transport_direction(torch.randn(3, 2, 2, generator=g, dtype=torch.float64), h_basis, x_basis)
    assert abs(float(v.norm()) - 1) < 1e-12
    flat = x_basis.reshape(3, -1)
    torch.testing.assert_close(flat.T @ (flat @ v.reshape(-1)), v.reshape(-1))  # in span(V1)
    with pytest.raises(HSpaceError, match="u0"):
        transport_direction(torch.randn(5), h_basis, x_basis)


def test_x_space_guidance_linear_for_small_step_and_identity_for_zero_strength():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(32, 32, generator=g, dtype=torch.float64) * 0.3
    eps = batched(lambda x: torch.sin(a @ x.reshape(32)).reshape(2, 4, 4))
    x = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    v /= v.norm()
    step, strength = 1e-6, 0.1
    first = x_space_guidance(eps, x, v, step_size=step, strength=strength, num_iters=1)[1]
    jv = JacobianOperator(eps, x).jvp(v[None])[0]
    torch.testing.assert_close((first - x) / step, strength * jv, rtol=1e-5, atol=1e-8)
    frozen = x_space_guidance(eps, x, v, strength=0.0, num_iters=4)
    assert len(frozen) == 5 and all(torch.equal(it, x) for it in frozen)
    assert x_space_guidance(eps, x, v, num_iters=0) == [x]


def test_x_space_guidance_on_unet_denoiser():
    den = tiny_denoiser()
    x = torch.randn(1, 3, 8, 8)
    v = torch.randn_like(x)
    iterates = x_space_guidance(lambda z: den.eps(z, 2.0), x, v / v.norm(), num_iters=3, strength=0.5)
    assert len(iterates) == 4 and iterates[-1].shape == x.shape and not torch.equal(iterates[-1], x)


def test_curvedness_zero_for_affine_and_positive_for_curved():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 4, generator=g, dtype=torch.float64)
    affine = lambda x: x @ a.T + 1.0
    x_a, x_b = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    assert abs(float(curvedness(affine, x_a, x_b))) < 1e-12
    lifted = lambda x: torch.cat([x, (x ** 2).sum(1, keepdim=True)], 1)  # f(x) = (x, |x|^2)
    kappa = float(curvedness(lifted, x_a, x_b, num_points=32))
    assert 0 < kappa < 1
    # a segment through the origin folds back in the last coordinate: strictly more curved than a short one
    assert curvedness(lifted, -x_a, x_a) > curvedness(lifted, x_a, 1.01 * x_a)


def test_curvedness_of_unet_encoder_is_finite():
    den = tiny_denoiser()
    f = encoder_function(den, 1.0)
    kappa = curvedness(f, torch.randn(3, 8, 8), torch.randn(3, 8, 8), num_points=4)
    assert 0 <= float(kappa) < 1


def test_basis_and_haas_directions_on_a_tiny_text_conditional_unet():
    den = DiffusersDenoiser(tiny_cond_unet().requires_grad_(False), VPSchedule.scaled_linear(),
                            cond=torch.randn(1, 5, 8))
    x = torch.randn(4, 8, 8)
    basis = pullback_basis(encoder_function(den, 3.0), x, num_vectors=2, min_iter=2, max_iter=100, tol=1e-4)
    assert basis.x_basis.shape == (2, 4, 8, 8) and basis.converged
    f, h0 = eps_of_h(den, x, 3.0)
    result = subspace_iteration(JacobianOperator(f, h0), 2, tol=1e-4, max_iter=200)
    assert result.right.shape == (2, *h0.shape) and result.converged


# -- Park's edit recipe (hspace_core.discovery.pullback_edit) ---------------------------------------------------
def _cond_denoisers():
    unet = tiny_cond_unet()
    unet.requires_grad_(False)
    schedule = VPSchedule.linear()
    torch.manual_seed(5)
    null, prompt = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    return (DiffusersDenoiser(unet, schedule, cond=null), DiffusersDenoiser(unet, schedule, cond=prompt), schedule)


def test_recipe_samples_with_the_source_prompt_and_finds_the_basis_with_the_edit_prompt():
    from hspace_core.discovery.pullback_edit import denoiser_runner, park_encoder, pullback_edit
    from hspace_core.samplers import sample_ddim

    source, edit, schedule = _cond_denoisers()
    sigmas = schedule.sigmas_for([999, 749, 499, 249, 0]).float()
    timesteps = schedule.timestep(sigmas[:-1].double()).tolist()
    x_T = torch.randn(1, 4, 8, 8) * float(sigmas[0])
    result = pullback_edit(denoiser_runner(source), edit, sigmas, timesteps, t_edit=500, sigma_boost=0.0,
                           start=x_T, num_vectors=2, guidance_strength=0.0, guidance_steps=2, max_iter=5)
    # Park: the regeneration runs with the source (null) prompt; lambda = 0 leaves the image unedited
    torch.testing.assert_close(result.unedited, sample_ddim(source, x_T, sigmas, disable=True))
    torch.testing.assert_close(result.output, result.unedited, atol=1e-5, rtol=1e-5)
    assert result.step == 2 and result.timestep == pytest.approx(499, abs=0.5)
    # the basis is the edit prompt's, in Park's x_t units
    x = sample_ddim(source, x_T, sigmas[:3], disable=True)[0]
    sigma = float(sigmas[2])
    with_edit = pullback_basis(park_encoder(edit, sigma), x, 2, max_iter=5)
    with_source = pullback_basis(park_encoder(source, sigma), x, 2, max_iter=5)
    torch.testing.assert_close(result.basis.singular_values, with_edit.singular_values)
    assert not torch.allclose(result.basis.singular_values, with_source.singular_values, rtol=1e-4)  # a tiny model: the two prompts differ by ~1e-3


def test_park_units_singular_values_and_guidance_step():
    from hspace_core.discovery.pullback_edit import guide, park_encoder

    den = tiny_denoiser()
    den.unet.requires_grad_(False)
    sigma = 6.0  # near t = 800: sqrt(alpha_bar) = 1 / sqrt(37)
    x = torch.randn(3, 8, 8) * sigma
    ours = pullback_basis(encoder_function(den, sigma), x, 2, min_iter=2, max_iter=200, tol=1e-6)
    parks = pullback_basis(park_encoder(den, sigma), x / math.sqrt(1 + sigma ** 2), 2, min_iter=2, max_iter=200,
                           tol=1e-6)
    torch.testing.assert_close(parks.singular_values, ours.singular_values * math.sqrt(1 + sigma ** 2), rtol=1e-3,
                               atol=0)
    # one iteration of guidance moves Park's x_t = sqrt(alpha_bar) x by lambda [eps(x_t + v) - eps(x_t)]
    v = torch.randn(3, 8, 8)
    v = v / v.norm()
    scale = 1 / math.sqrt(1 + sigma ** 2)
    with torch.no_grad():
        eps_of_xt = lambda z: den.eps(z[None] / scale, sigma)[0]  # noqa: E731
        expected_xt = x * scale + 0.5 * (eps_of_xt(x * scale + v) - eps_of_xt(x * scale))
        moved = guide(den, x, v, sigma, strength=0.5, steps=1)
    torch.testing.assert_close(moved * scale, expected_xt, atol=1e-5, rtol=1e-5)


def test_park_defaults_boost_and_edit_step():
    from hspace_core.discovery.pullback_edit import park_t_boost, step_at

    assert park_t_boost(1000, latent_model=False) == 200 and park_t_boost(1000, latent_model=True) == 0
    assert step_at([999, 749, 499, 249], 500) == 2 and step_at([999, 749], 10) == 1
