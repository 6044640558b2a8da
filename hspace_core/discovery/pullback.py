"""The pullback geometry of Park et al. 2023 (ALGORITHMS.md §3): local bases of x-space from the encoder's
Jacobian, x-space guidance, parallel transport, Grassmann distances and the curvedness of a segment.

The map is f_t: x_t -> h_t, the UNet **encoder up to and including the mid block** at a fixed timestep
(``DiffusersDenoiser.encode``; the decoder never runs, so each product costs an encoder pass only).
With the SVD J = ∂h/∂x = U Σ Vᵀ, the columns of V are the local latent basis in x-space and those of U the
tangent basis in h-space. Bases are returned with one vector per row: ``[n, *shape]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import HSpaceError
from .jacobian import BatchFunction, JacobianOperator, batch_jvp, subspace_iteration

Callback = Callable[[dict[str, Any]], None]


@dataclass
class PullbackBasis:
    """Park's local basis at one x.

    Attributes:
        h_basis: U, ``[n, *h_shape]`` unit vectors (the tangent basis in h-space, J v / σ).
        singular_values: σ, ``[n]`` descending.
        x_basis: V, ``[n, *x_shape]`` orthonormal (the latent basis in x-space).
        iterations, converged, residual: of the subspace iteration (residual relative to σ_1², vs tol).
        gap_ratio: σ_{n+1} / σ_n from the oversampled Ritz values; in_cluster: it exceeds
            :data:`CLUSTER_RATIO`, so span(V) is ill-determined at this n (ask for a rank at a gap).
    """

    h_basis: torch.Tensor
    singular_values: torch.Tensor
    x_basis: torch.Tensor
    iterations: int
    converged: bool
    residual: float = 0.0
    gap_ratio: float = float("nan")

    @property
    def in_cluster(self) -> bool:
        return self.gap_ratio > CLUSTER_RATIO


CLUSTER_RATIO = 0.95
"""σ_{n+1}/σ_n above which the requested rank n is reported as inside a cluster of singular values."""


def encoder_function(denoiser: Any, sigma: float) -> BatchFunction:
    """f(x) = h, the encoder of ``denoiser`` (anything with ``encode(x, sigma)``) at a fixed sigma.

    For conditional models the denoiser's own ``cond`` (the edit prompt) is fixed inside f.
    """
    return lambda x: denoiser.encode(x, sigma)


def pullback_basis(f: BatchFunction, x: torch.Tensor, num_vectors: int = 50, min_iter: int = 1,
                   max_iter: int = 50, tol: float = 1e-3, oversample: int | None = None,
                   chunk_size: int | None = None, seed: int = 0, jvp_mode: str = "reverse",
                   callback: Callback | None = None) -> PullbackBasis:
    """The top-n local basis of J = ∂f/∂x at ``x`` (Park et al. 2023, "Algorithm 1", the power method).

    Subspace iteration V <- orth(Jᵀ J V) with batched JVP/VJP and Rayleigh-Ritz
    (:func:`~.jacobian.subspace_iteration`) on a block of n + ``oversample`` vectors (default n // 2 + 2:
    with gaps σ_{n+1}/σ_n near 1, as on diffusion encoders, the n wanted vectors converge at the rate
    (σ_{l+1}/σ_n)² of the larger block instead of not at all). It stops when the residuals
    ‖JᵀJv_i − σ_i²v_i‖ ≤ tol·σ_1² of the n wanted pairs (sign- and rotation-invariant: a test on the
    subspace, unlike Park's elementwise allclose on V, which sign flips and rotations inside clusters keep
    from firing), or at ``max_iter``; :attr:`PullbackBasis.in_cluster` reports a rank inside a cluster.

    Args:
        f: batch-native x -> h (e.g. :func:`encoder_function`); x: one point ``[C, H, W]`` (no batch).
        num_vectors: n (50 in Park's analyses, 2 in the released editing entry point).
        callback: ``{"iteration", "singular_values", "residuals"}`` per iteration; raise to stop.
    """
    op = JacobianOperator(f, x, chunk_size=chunk_size, jvp_mode=jvp_mode)
    extra = num_vectors // 2 + 2 if oversample is None else oversample
    result = subspace_iteration(op, num_vectors, oversample=extra, max_iter=max_iter, min_iter=min_iter, tol=tol,
                                seed=seed, callback=callback)
    return PullbackBasis(result.left, result.singular_values, result.right, result.iterations, result.converged,
                         result.residual, result.gap_ratio)


def x_space_guidance(eps_fn: BatchFunction, x: torch.Tensor, v: torch.Tensor, step_size: float = 1.0,
                     strength: float = 0.1, num_iters: int = 16,
                     callback: Callback | None = None) -> list[torch.Tensor]:
    """Park's x-space guidance: x^{k+1} = x^k + λ [ε(x^k + s·v) − ε(x^k)], for k < K.

    Instead of the naive traversal x + γv, the image follows the change that the shifted input causes in
    the noise prediction. Both ε evaluations of an iteration share one batched call.

    Units: Park's, x = x_t (= sqrt(ᾱ)·x_kdiffusion) and ``eps_fn`` a function of x_t; his λ and s are only
    meaningful there. A k-diffusion x is sqrt(1 + σ²) times larger, so passing it with
    ``lambda x: denoiser.eps(x, sigma)`` shrinks the move by orders of magnitude near t = T (measured on the
    embedded model: 4e-5 times Park's at t = 999). From a k-diffusion x, call
    :func:`~hspace_core.discovery.pullback_edit.guide`, which converts both ways.

    Args:
        eps_fn: batch-native x_t -> ε at the edit timestep; x: x_t, ``[C, H, W]`` or ``[1, C, H, W]``.
        v: a direction of x's shape (Park: a unit x-basis vector, times ±1).
        step_size: s (1); strength: λ (0.1 for CelebA-HQ at edit_t = T); num_iters: K (16).
        callback: ``{"iteration", "x"}`` after every iteration; raise to stop.

    Returns:
        The iterates [x^0 = x, x^1, ..., x^K].
    """
    if v.shape != x.shape:
        raise HSpaceError(f"the direction v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    if num_iters < 0:
        raise HSpaceError(f"num_iters must be >= 0, got {num_iters}")
    single = x.ndim == 3
    current = x.unsqueeze(0) if single else x
    shift = (v.unsqueeze(0) if single else v).to(current)
    iterates = [x]
    for iteration in range(1, num_iters + 1):
        with torch.no_grad():
            eps_shifted, eps_plain = eps_fn(torch.cat([current + step_size * shift, current])).chunk(2)
        current = current + strength * (eps_shifted - eps_plain)
        iterates.append(current[0] if single else current)
        if callback is not None:
            callback({"iteration": iteration, "x": iterates[-1]})
    return iterates


def transport_direction(u0: torch.Tensor, h_basis: torch.Tensor, x_basis: torch.Tensor) -> torch.Tensor:
    """Park's parallel transport of an h-space direction to another sample: v = normalise(V₁ U₁ᵀ u₀).

    Express u₀ in sample 1's tangent basis (coefficients U₁ᵀu₀) and map them back to x-space through
    sample 1's latent basis V₁. Returns a unit vector of x's shape in span(V₁).

    Args:
        u0: ``[*h_shape]``; h_basis: U₁ ``[n, *h_shape]``; x_basis: V₁ ``[n, *x_shape]``.
    """
    n = h_basis.shape[0]
    if x_basis.shape[0] != n or tuple(h_basis.shape[1:]) != tuple(u0.shape):
        raise HSpaceError(f"u0 of shape h {tuple(h_basis.shape[1:])} and n = {n} x-basis vectors expected, got "
                          f"u0 {tuple(u0.shape)} and {x_basis.shape[0]} x-basis vectors")
    coefficients = h_basis.reshape(n, -1).double() @ u0.reshape(-1).double()
    v = coefficients @ x_basis.reshape(n, -1).double()
    norm = v.norm()
    if norm == 0:
        raise HSpaceError("u0 is orthogonal to the tangent basis U1: it has no transport to this sample")
    return (v / norm).reshape(x_basis.shape[1:]).to(x_basis.dtype)


def grassmann_distance(basis_a: torch.Tensor, basis_b: torch.Tensor) -> torch.Tensor:
    """Geodesic distance between span(A) and span(B) on the Grassmannian: ‖θ‖₂, θ the principal angles.

    θ_i = arccos(clip(svd(Q_aᵀ Q_b), −1, 1)) with Q the orthonormalised bases (so any spanning set of
    rows works). Small angles are taken from the sines, svd((I − Q_a Q_aᵀ) Q_b), where arccos loses
    precision (Knyazev & Argentati 2002). float64. Bases ``[k, *shape]``, the same k and shape.
    """
    if basis_a.shape != basis_b.shape:
        raise HSpaceError(f"two bases of the same shape [k, ...] expected, got {tuple(basis_a.shape)} and "
                          f"{tuple(basis_b.shape)}")
    k = basis_a.shape[0]
    qa = torch.linalg.qr(basis_a.reshape(k, -1).double().T).Q
    qb = torch.linalg.qr(basis_b.reshape(k, -1).double().T).Q
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(-1, 1)  # descending
    sines = torch.linalg.svdvals(qb - qa @ (qa.T @ qb)).clamp(0, 1).flip(0)  # ascending -> same angle order
    angles = torch.where(cosines ** 2 < 0.5, torch.arccos(cosines), torch.arcsin(sines))
    return angles.norm()


def curvedness(f: BatchFunction, x_a: torch.Tensor, x_b: torch.Tensor, num_points: int = 16,
               jvp_mode: str = "reverse") -> torch.Tensor:
    """The curvedness of the segment from x_a to x_b under f (our definition; ALGORITHMS.md §3.6).

    Park et al. (arXiv 2302.12469) "define the curvedness of a line segment between samples" but the
    formula was not retrieved, so this is the proposal of ALGORITHMS.md §3.6, flagged as ours:

        κ = 1 − ‖f(x_b) − f(x_a)‖ / ∫₀¹ ‖J(x(s)) (x_b − x_a)‖ ds,   x(s) = (1 − s) x_a + s x_b,

    the chord of the image curve over its length. κ ∈ [0, 1]; it is 0 iff f maps the segment to a straight,
    monotone path in H (e.g. any affine f), and grows as the image bends. The length is integrated with
    ``num_points``-point Gauss-Legendre quadrature, all the JVPs in one batch.

    Args:
        f: batch-native x -> h; x_a, x_b: two points of the same shape (no batch dimension).
    """
    if x_a.shape != x_b.shape:
        raise HSpaceError(f"x_a and x_b of the same shape expected, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    if num_points < 1:
        raise HSpaceError(f"num_points must be >= 1, got {num_points}")
    nodes, weights = np.polynomial.legendre.leggauss(num_points)
    s = torch.tensor((nodes + 1) / 2, dtype=x_a.dtype).view(-1, *[1] * x_a.ndim)
    weights = torch.tensor(weights / 2, dtype=torch.float64)
    delta = x_b - x_a
    points = (1 - s) * x_a + s * x_b
    speed = batch_jvp(f, points, delta.unsqueeze(0).expand_as(points), jvp_mode)
    length = (speed.flatten(1).double().norm(dim=1) * weights).sum()
    with torch.no_grad():
        ends = f(torch.stack([x_a, x_b])).double()
    chord = (ends[1] - ends[0]).norm()
    if length == 0:
        return torch.zeros((), dtype=torch.float64)
    return (1 - chord / length).clamp(min=0)
