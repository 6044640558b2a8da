"""Haas's Jacobian directions (ALGORITHMS.md §2.5; acceptance tests 16-19)."""
import pytest
import torch

from hspace_core.discovery.jacobian import (JacobianOperator, batched, broadcast_direction, eps_of_h,
                                            jacobian_directions, power_iteration_deflation, subspace_iteration,
                                            trajectory_jacobian_directions)
from hspace_core.errors import HSpaceError
from tests.tiny import tiny_denoiser

torch.set_num_threads(1)

IN_SHAPE, OUT_SHAPE = (4, 2, 2), (3, 4, 4)


def _analytic(seed=0):
    """A smooth nonlinear map R^16 -> R^48 with a well-separated spectrum, per sample."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(48, 16, generator=g, dtype=torch.float64) * torch.logspace(0.5, -1, 16, dtype=torch.float64)
    b = torch.randn(48, 16, generator=g, dtype=torch.float64) * 0.1

    def per_sample(z):
        flat = z.reshape(16)
        return (torch.sin(a @ flat) + (b @ flat) ** 2).reshape(OUT_SHAPE)

    z0 = torch.randn(IN_SHAPE, generator=g, dtype=torch.float64)
    return per_sample, z0


def _dense_svd(per_sample, z0, mask=None):
    f = (lambda z: per_sample(z) * mask) if mask is not None else per_sample
    jac = torch.func.jacrev(lambda z: f(z).flatten())(z0).reshape(-1, z0.numel())
    _, s, vh = torch.linalg.svd(jac)
    return s, vh


def _assert_matches(result, s, vh, k=3, rtol=1e-4):
    torch.testing.assert_close(result.singular_values, s[:k].to(result.singular_values), rtol=rtol, atol=0)
    cos = (result.right.reshape(k, -1).double() * vh[:k].double()).sum(-1).abs()
    assert torch.all(cos > 0.999), cos


@pytest.mark.parametrize("method", ["subspace", "power"])
@pytest.mark.parametrize("masked", [False, True])
def test_top3_match_dense_svd(method, masked):
    per_sample, z0 = _analytic()
    mask = None
    if masked:
        mask = torch.zeros(OUT_SHAPE, dtype=torch.float64)
        mask[:, 1:3, :] = 1
    op = JacobianOperator(batched(per_sample), z0, output_mask=mask)
    result = jacobian_directions(op, 3, method, tol=1e-10, max_iter=500)
    assert result.converged
    _assert_matches(result, *_dense_svd(per_sample, z0, mask))


def test_dense_of_operator_equals_jacrev():
    per_sample, z0 = _analytic()
    op = JacobianOperator(batched(per_sample), z0, chunk_size=7)
    dense = torch.func.jacrev(lambda z: per_sample(z).flatten())(z0).reshape(48, 16)
    torch.testing.assert_close(op.dense(), dense)


@pytest.mark.parametrize("jvp_mode", ["forward", "reverse"])
def test_jvp_vjp_adjointness(jvp_mode):
    per_sample, z0 = _analytic(1)
    op = JacobianOperator(batched(per_sample), z0, chunk_size=2, jvp_mode=jvp_mode)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(5, *IN_SHAPE, generator=g, dtype=torch.float64)
    u = torch.randn(5, *OUT_SHAPE, generator=g, dtype=torch.float64)
    lhs = (u * op.jvp(v)).flatten(1).sum(1)
    rhs = (op.vjp(u) * v).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=0)


def test_unet_jvp_by_reverse_over_reverse_matches_finite_differences():
    den = tiny_denoiser()
    den.unet.requires_grad_(False)
    f, h0 = eps_of_h(den, torch.randn(3, 8, 8), 1.0)
    op = JacobianOperator(f, h0)
    v = torch.randn(2, *h0.shape)
    jv = op.jvp(v)
    step = 1e-2
    finite = (f(h0 + step * v) - f(h0 - step * v)) / (2 * step)
    torch.testing.assert_close(jv, finite, rtol=1e-2, atol=2e-3)
    u = torch.randn_like(jv)
    torch.testing.assert_close((u * jv).sum(), (op.vjp(u) * v).sum(), rtol=1e-5, atol=1e-5)


def test_all_ones_mask_equals_unmasked():
    per_sample, z0 = _analytic(2)
    plain = subspace_iteration(JacobianOperator(batched(per_sample), z0), 3, tol=1e-10, max_iter=500)
    ones = subspace_iteration(JacobianOperator(batched(per_sample), z0, torch.ones(OUT_SHAPE, dtype=torch.float64)),
                              3, tol=1e-10, max_iter=500)
    torch.testing.assert_close(plain.singular_values, ones.singular_values)
    torch.testing.assert_close(plain.right, ones.right)


@pytest.mark.parametrize("method", ["subspace", "power"])
def test_mask_on_outputs_independent_of_h_gives_zero(method):
    per_sample, z0 = _analytic()

    def partly_constant(z):
        out = per_sample(z)
        return torch.cat([out[:2], torch.ones_like(out[2:])])  # channel 2 ignores z

    mask = torch.zeros(OUT_SHAPE, dtype=torch.float64)
    mask[2] = 1
    op = JacobianOperator(batched(partly_constant), z0, output_mask=mask)
    result = jacobian_directions(op, 2, method)
    assert torch.all(result.singular_values == 0)


@pytest.mark.parametrize("method", ["subspace", "power"])
def test_vectors_are_orthogonal(method):
    per_sample, z0 = _analytic(3)
    result = jacobian_directions(JacobianOperator(batched(per_sample), z0), 3, method, tol=1e-8, max_iter=300)
    flat = result.right.reshape(3, -1)
    assert (flat @ flat.T - torch.eye(3, dtype=flat.dtype)).abs().max() < 1e-4
    assert torch.all(result.singular_values[1:] <= result.singular_values[:-1] * (1 + 1e-6))


def test_callback_can_interrupt_and_non_batch_function_is_refused():
    per_sample, z0 = _analytic()

    class Stop(Exception):
        pass

    def stop(info):
        if info["iteration"] == 2:
            raise Stop

    with pytest.raises(Stop):
        subspace_iteration(JacobianOperator(batched(per_sample), z0), 2, callback=stop)
    with pytest.raises(HSpaceError, match="batch-native"):
        JacobianOperator(lambda z: z.sum(0), z0).out_shape
    with pytest.raises(HSpaceError, match="number of singular vectors"):
        subspace_iteration(JacobianOperator(batched(per_sample), z0), 17)


def test_unet_eps_of_h_top3_match_dense():
    den = tiny_denoiser()
    den.unet.requires_grad_(False)
    x = torch.randn(3, 8, 8)
    f, h0 = eps_of_h(den, x, 2.0)
    op = JacobianOperator(f, h0)
    dense = op.dense().double()  # [192, 256]
    _, s, vh = torch.linalg.svd(dense)
    result = subspace_iteration(op, 3, oversample=4, tol=1e-6, max_iter=300)
    _assert_matches(result, s, vh)
    probe = torch.randn(2, *h0.shape)
    torch.testing.assert_close(op.jvp(probe).reshape(2, -1), probe.reshape(2, -1) @ dense.float().T,
                               rtol=1e-4, atol=1e-5)


def test_trajectory_and_broadcast():
    den = tiny_denoiser()
    den.unet.requires_grad_(False)
    xs = torch.randn(2, 3, 8, 8)
    traj = trajectory_jacobian_directions(den, xs, [3.0, 0.5], num_vectors=2, tol=1e-4, max_iter=100)
    assert traj.right.shape == (2, 2, 16, 4, 4) and traj.singular_values.shape == (2, 2)
    delta = traj.broadcast(0, 1)
    assert delta.shape == (2, 16, 4, 4)
    torch.testing.assert_close(delta[1], traj.singular_values[1, 1] * traj.right[0, 1])
    torch.testing.assert_close(delta.flatten(1).norm(dim=1), traj.singular_values[:, 1])
    with pytest.raises(HSpaceError, match="step_index"):
        broadcast_direction(traj.right, traj.singular_values, 5, 0)


def test_power_iteration_counts_iterations():
    per_sample, z0 = _analytic()
    calls = []
    result = power_iteration_deflation(JacobianOperator(batched(per_sample), z0), 2, max_iter=5,
                                       callback=calls.append)
    assert result.iterations == len(calls) <= 10


def _unet_problem():
    den = tiny_denoiser()
    den.unet.requires_grad_(False)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(3))
    f, h0 = eps_of_h(den, x, 2.0)
    _, s, vh = torch.linalg.svd(JacobianOperator(f, h0).dense().double())
    return f, h0, s, vh


def test_float32_default_tolerance_converges_from_every_start_and_is_accurate():
    f, h0, s, vh = _unet_problem()
    for seed in range(4):
        result = subspace_iteration(JacobianOperator(f, h0), 3, oversample=4, seed=seed, max_iter=200)
        assert result.converged and result.residual <= 1e-4, (seed, result.iterations, result.residual)
        _assert_matches(result, s, vh, rtol=1e-3)
        assert result.next_singular_value == pytest.approx(float(s[3]), rel=1e-2)


def test_power_iteration_converged_means_accurate():
    f, h0, s, vh = _unet_problem()
    for tol in (1e-2, 1e-3, 1e-4):
        result = power_iteration_deflation(JacobianOperator(f, h0), 3, tol=tol, max_iter=300)
        cos = (result.right.reshape(3, -1).double() * vh[:3]).sum(-1).abs()
        if result.converged:
            assert result.residual <= tol
            assert float(cos.min()) > 0.99, (tol, cos)


def test_tolerance_under_the_dtype_floor_is_refused():
    f, h0, _, _ = _unet_problem()
    with pytest.raises(HSpaceError, match="tol must be at least"):
        subspace_iteration(JacobianOperator(f, h0), 3, tol=1e-7)
    per_sample, z0 = _analytic()
    assert subspace_iteration(JacobianOperator(batched(per_sample), z0), 3, tol=1e-12, max_iter=500).converged
