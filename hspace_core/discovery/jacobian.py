"""Jacobian spectra by matrix-free products: the image-specific directions of Haas et al. 2024
(ALGORITHMS.md §2.5) and the shared machinery of Park et al.'s pullback basis (§3.2, ``pullback.py``).

Everything works on a **batch-native** function ``f: [b, *in_shape] -> [b, *out_shape]`` whose rows are
independent (a UNet in eval mode is; :func:`batched` turns a per-sample function into one with
``torch.func.vmap``). The Jacobian J = ∂f/∂z at one point z0 is applied to blocks of m vectors at once:

- Jᵀ U by reverse mode, ``torch.func.vjp`` of f at z0 repeated m times, whose pullback is built once per
  block size and reused on every iteration (only the backward pass is paid again);
- J V as the VJP of the linear map u -> Jᵀu (reverse-over-reverse), whose pullback is cached too, so a
  JVP costs one double-backward pass and no forward pass; or by forward mode, ``torch.func.jvp`` with the
  m tangents as the batch, which re-runs the forward every time (``jvp_mode="forward"``). Measured on a
  small UNet (benchmarks/bench_discovery.py), the cached reverse-over-reverse is 2-3x faster, and forward
  mode has gaps in PyTorch 2.x that diffusers UNets with attention hit (``group_norm`` on the strided
  concatenations of the up path). Forward mode keeps no graph between calls: less memory.

Scaled-dot-product attention has neither a forward-mode nor a double-backward derivative in its fused
kernels, so every product runs under ``sdpa_kernel(MATH)``, the composite implementation that has both.

Two eigen-solvers for the top-k right singular vectors of J (those of JᵀJ):

- :func:`subspace_iteration`: block power method with Rayleigh-Ritz (Golub & Van Loan §8.2.4). Per
  iteration one batched JVP and one batched VJP on a block of l = k + oversample vectors; converged when
  the residuals ‖JᵀJ v_i − σ_i² v_i‖ of the k wanted Ritz pairs (not the oversampling ones) are
  ≤ tol · σ_1², a backward error relative to ‖JᵀJ‖. Unlike a residual relative to each σ_i², it has a
  floor set by the dtype of the products near ε·σ_1² whatever the spectrum, so the same tol means the
  same in float32 and float64 (a tol under 4 ε of the dtype is refused: it could never be met).
- :func:`power_iteration_deflation`: the papers' sequential method (Haas ``editing/jacobian.py``): power
  iteration on J Jᵀ in output space for one vector at a time, deflating the output-space vectors already
  found; it stops when the residual ‖P J Jᵀ v − λ v‖ ≤ tol · λ_1 held ``patience`` iterations in a row
  (Haas counts many small changes too; one small change of λ happens on a plateau long before v is
  accurate). k·iterations single-vector JVPs and VJPs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import HSpaceError

Callback = Callable[[dict[str, Any]], None]
BatchFunction = Callable[[torch.Tensor], torch.Tensor]
JVP_MODES = ("reverse", "forward")


def batched(per_sample: Callable[[torch.Tensor], torch.Tensor]) -> BatchFunction:
    """A batch-native function from a per-sample one, with ``torch.func.vmap``."""
    return torch.func.vmap(per_sample)


@dataclass
class JacobianSVD:
    """The top singular triplets of a Jacobian J = ∂f/∂z.

    Attributes:
        singular_values: ``[k]`` descending.
        right: ``[k, *in_shape]`` unit right singular vectors (input space: h for Haas, x for Park).
        left: ``[k, *out_shape]`` unit left singular vectors J v / σ (zero where σ = 0).
        iterations: iterations run (summed over vectors for the sequential method).
        converged: whether every vector met the tolerance before the iteration limit.
        residual: the largest reached residual of the k vectors relative to σ_1² (compare with tol).
        next_singular_value: the Ritz estimate of σ_{k+1} (NaN without oversampling): σ_{k+1}/σ_k near 1
            means the k-th vector sits in a cluster and only a larger k has a well-determined span.
    """

    singular_values: torch.Tensor
    right: torch.Tensor
    left: torch.Tensor
    iterations: int
    converged: bool
    residual: float = 0.0
    next_singular_value: float = float("nan")

    @property
    def gap_ratio(self) -> float:
        """σ_{k+1} / σ_k (NaN when unknown); near 1: the requested rank sits inside a cluster."""
        last = float(self.singular_values[-1])
        return self.next_singular_value / last if last > 0 else float("nan")


class JacobianOperator:
    """J = ∂f/∂z at ``point`` for a batch-native ``f``, optionally masked: J_mask = diag(mask)·J.

    Args:
        f: ``[b, *in_shape] -> [b, *out_shape]``, rows independent.
        point: z0 of shape ``in_shape`` (no batch dimension).
        output_mask: broadcastable to ``out_shape``; f's output is multiplied by it (Haas's pixel masks).
        chunk_size: at most this many vectors per JVP/VJP call (memory bound); None = the whole block.
        jvp_mode: ``"reverse"`` (J V as the VJP of the linear map u -> Jᵀu, reverse-over-reverse, its
            pullback cached per block size) or ``"forward"`` (``torch.func.jvp``, no cached graph).
    """

    def __init__(self, f: BatchFunction, point: torch.Tensor, output_mask: torch.Tensor | None = None,
                 chunk_size: int | None = None, jvp_mode: str = "reverse"):
        if not isinstance(point, torch.Tensor) or not point.is_floating_point():
            raise HSpaceError(f"the point z0 must be a floating-point tensor, got {type(point).__name__}")
        if chunk_size is not None and chunk_size < 1:
            raise HSpaceError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        if jvp_mode not in JVP_MODES:
            raise HSpaceError(f"jvp_mode must be one of {JVP_MODES}, got {jvp_mode!r}")
        self.point = point.detach()
        self.jvp_mode = jvp_mode
        self.chunk_size = chunk_size
        self._f = f if output_mask is None else (lambda z: f(z) * output_mask.to(z))
        self._pullbacks: dict[int, Callable] = {}
        self._transposed: dict[int, Callable] = {}
        self._out_shape: tuple[int, ...] | None = None

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.point.shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self._out_shape is None:
            self._pullback(1)
        return self._out_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.point.dtype

    def _repeat(self, m: int) -> torch.Tensor:
        return self.point.unsqueeze(0).expand(m, *self.in_shape).clone()

    def _pullback(self, m: int) -> Callable:
        if m not in self._pullbacks:
            with sdpa_kernel([SDPBackend.MATH]):
                out, pullback = torch.func.vjp(self._f, self._repeat(m))
            if out.shape[0] != m:
                raise HSpaceError(f"f must map a batch of {m} rows to {m} rows (batch-native, rows independent), "
                                  f"got an output of shape {tuple(out.shape)}")
            self._out_shape = tuple(out.shape[1:])
            self._pullbacks[m] = pullback
        return self._pullbacks[m]

    def _linear_pullback(self, m: int) -> Callable:
        """The pullback of the linear map u -> Jᵀu, whose VJP is J (reverse-over-reverse JVP)."""
        if m not in self._transposed:
            pullback = self._pullback(m)
            zeros = self.point.new_zeros(m, *self.out_shape)
            self._transposed[m] = torch.func.vjp(lambda u: pullback(u)[0], zeros)[1]
        return self._transposed[m]

    def _blockwise(self, block: torch.Tensor, apply: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``apply`` on chunks of at most ``chunk_size`` rows, the last one zero-padded to the same width
        (so one cached pullback serves every chunk)."""
        width = min(self.chunk_size or block.shape[0], block.shape[0])
        results = []
        with sdpa_kernel([SDPBackend.MATH]):
            for chunk in block.split(width):
                short = width - chunk.shape[0]
                padded = torch.cat([chunk, chunk.new_zeros(short, *chunk.shape[1:])]) if short else chunk
                results.append(apply(padded)[:chunk.shape[0]].detach())
        return torch.cat(results)

    def jvp(self, tangents: torch.Tensor) -> torch.Tensor:
        """J V for a block ``[m, *in_shape]`` -> ``[m, *out_shape]``."""
        tangents = tangents.reshape(-1, *self.in_shape).to(self.dtype).contiguous()

        def apply(chunk: torch.Tensor) -> torch.Tensor:
            if self.jvp_mode == "reverse":
                return self._linear_pullback(chunk.shape[0])(chunk)[0]
            result = torch.func.jvp(self._f, (self._repeat(chunk.shape[0]),), (chunk,))[1]
            self._out_shape = tuple(result.shape[1:])
            return result

        return self._blockwise(tangents, apply)

    def vjp(self, cotangents: torch.Tensor) -> torch.Tensor:
        """Jᵀ U for a block ``[m, *out_shape]`` -> ``[m, *in_shape]`` (reverse mode, pullbacks reused)."""
        cotangents = cotangents.reshape(-1, *self.out_shape).to(self.dtype).contiguous()
        return self._blockwise(cotangents, lambda chunk: self._pullback(chunk.shape[0])(chunk)[0])

    def dense(self) -> torch.Tensor:
        """The whole Jacobian ``[out_dim, in_dim]``, one VJP per output coordinate (small problems, tests)."""
        out_dim = int(torch.tensor(self.out_shape).prod())
        basis = torch.eye(out_dim, dtype=self.dtype).reshape(out_dim, *self.out_shape)
        return self.vjp(basis).reshape(out_dim, -1)


def batch_jvp(f: BatchFunction, points: torch.Tensor, tangents: torch.Tensor,
              jvp_mode: str = "reverse") -> torch.Tensor:
    """Row-wise J(z_i) v_i for a batch-native f at a batch of points (one call, not one per point).

    ``jvp_mode`` as for :class:`JacobianOperator` (nothing is cached here: each call pays its passes).
    """
    if jvp_mode not in JVP_MODES:
        raise HSpaceError(f"jvp_mode must be one of {JVP_MODES}, got {jvp_mode!r}")
    if points.shape != tangents.shape:
        raise HSpaceError(f"points and tangents of the same shape expected, got {tuple(points.shape)} and "
                          f"{tuple(tangents.shape)}")
    points, tangents = points.detach().contiguous(), tangents.to(points).contiguous()
    with sdpa_kernel([SDPBackend.MATH]):
        if jvp_mode == "forward":
            return torch.func.jvp(f, (points,), (tangents,))[1].detach()
        out, pullback = torch.func.vjp(f, points)
        transposed = torch.func.vjp(lambda u: pullback(u)[0], torch.zeros_like(out))[1]
        return transposed(tangents)[0].detach()


def _check_tol(tol: float, dtype: torch.dtype) -> None:
    floor = 4 * torch.finfo(dtype).eps
    if not tol >= floor:
        raise HSpaceError(f"tol must be at least {floor:.1e} for {dtype} products (4 machine epsilons, the floor of "
                          f"a residual relative to sigma_1^2), got {tol}")


def subspace_iteration(op: JacobianOperator, num_vectors: int, oversample: int = 2, max_iter: int = 50,
                       min_iter: int = 1, tol: float = 1e-4, seed: int = 0,
                       callback: Callback | None = None) -> JacobianSVD:
    """Top-k singular triplets of J by block power (subspace) iteration with Rayleigh-Ritz.

    Each iteration: W = J Q (batched JVP); the Ritz pairs of WᵀW = QᵀJᵀJQ give σ² and the Ritz vectors
    V = Q R; Z = Jᵀ(W R) = JᵀJ V (batched VJP) gives the residuals ‖Z_i − σ_i² V_i‖ / σ_1²; Q <- qr(Z).
    Stops when iteration ≥ ``min_iter`` and the k wanted residuals are ≤ ``tol``, or at ``max_iter``.
    Convergence of v_i is geometric with ratio (σ_{l+1} / σ_i)², l = k + oversample. By Davis-Kahan the
    angle of v_i to the true vector is at most about tol·σ_1² / (σ_i² − σ_{l+1}²).

    Args:
        op: the Jacobian operator.
        num_vectors: k.
        oversample: extra block vectors that speed convergence of the k wanted ones (not tested for
            convergence); with at least one, the result carries the estimate of σ_{k+1}.
        tol: on ‖JᵀJv_i − σ_i²v_i‖ / σ_1²; 1e-4 gives |cos| > 0.9999 for well-separated vectors.
        callback: ``{"iteration", "singular_values", "residuals"}`` after every iteration; raise to stop.
    """
    in_dim = op.point.numel()
    k = _check_count(num_vectors, in_dim)
    _check_tol(tol, op.dtype)
    width = min(k + max(oversample, 0), in_dim)
    generator = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(in_dim, width, generator=generator, dtype=torch.float64)).Q.T  # rows
    iteration, converged = 0, False
    for iteration in range(1, max_iter + 1):
        w = op.jvp(q.reshape(width, *op.in_shape)).reshape(width, -1).double()
        eigvals, rotation = torch.linalg.eigh(w @ w.T)
        eigvals, rotation = eigvals.flip(0).clamp(min=0), rotation.flip(1)
        vectors, images = rotation.T @ q, rotation.T @ w
        z = op.vjp(images.reshape(width, *op.out_shape)).reshape(width, -1).double()
        scale = max(float(eigvals[0]), torch.finfo(torch.float64).tiny)
        residuals = (z[:k] - eigvals[:k, None] * vectors[:k]).norm(dim=1) / scale
        if float(eigvals[0]) == 0.0:
            residuals = torch.zeros_like(residuals)
        if callback is not None:
            callback({"iteration": iteration, "singular_values": eigvals[:k].sqrt(), "residuals": residuals})
        if iteration >= min_iter and float(residuals.max()) <= tol:
            converged = True
            break
        q = torch.linalg.qr(z.T).Q.T
    sigma = eigvals[:k].sqrt()
    left = images[:k] / torch.where(sigma > 0, sigma, 1.0)[:, None]
    next_sigma = float(eigvals[k].sqrt()) if width > k else float("nan")
    return JacobianSVD(sigma.to(op.dtype), vectors[:k].reshape(k, *op.in_shape).to(op.dtype),
                       left.reshape(k, *op.out_shape).to(op.dtype), iteration, converged,
                       float(residuals.max()), next_sigma)


def power_iteration_deflation(op: JacobianOperator, num_vectors: int = 3, max_iter: int = 50, tol: float = 1e-4,
                              patience: int = 3, seed: int = 0, callback: Callback | None = None) -> JacobianSVD:
    """Haas et al.'s sequential power iteration on J Jᵀ with deflation, one vector at a time.

    For the i-th vector, a random output-space v is iterated v <- P(J Jᵀ v) / ‖·‖, P projecting out the
    left singular vectors already found; the eigenvalue estimate is λ = vᵀ P J Jᵀ v, and the vector is
    converged when the residual ‖P J Jᵀ v − λ v‖ ≤ tol · λ_1 (λ_1 the first vector's eigenvalue) held
    ``patience`` iterations in a row. Then σ_i = ‖Jᵀ v‖ and the h-space direction is u_i = Jᵀ v / σ_i.
    Kept as the papers' method; benchmarks/bench_discovery.py compares it with :func:`subspace_iteration`.

    Args:
        max_iter: per vector.
        callback: ``{"vector", "iteration", "eigenvalue", "residual"}`` after every iteration; raise to stop.
    """
    k = _check_count(num_vectors, op.point.numel())
    _check_tol(tol, op.dtype)
    if patience < 1:
        raise HSpaceError(f"patience must be a positive number of iterations, got {patience}")
    generator = torch.Generator().manual_seed(seed)
    out_dim = int(torch.tensor(op.out_shape).prod())
    found_left: list[torch.Tensor] = []
    sigmas, rights, total, all_converged, worst = [], [], 0, True, 0.0
    top = None

    def deflate(vec: torch.Tensor) -> torch.Tensor:
        """v − V(VᵀV)⁻¹Vᵀv for the left vectors V found so far (through an orthonormal basis of their span)."""
        if not found_left:
            return vec
        basis = torch.linalg.qr(torch.stack(found_left, 1)).Q
        return vec - basis @ (basis.T @ vec)

    for index in range(k):
        v = deflate(torch.randn(out_dim, generator=generator, dtype=torch.float64))
        v = v / v.norm()
        streak, converged, residual = 0, False, float("inf")
        for iteration in range(1, max_iter + 1):
            u = op.vjp(v.reshape(1, *op.out_shape)).reshape(-1).double()
            w = deflate(op.jvp(u.reshape(1, *op.in_shape)).reshape(-1).double())
            eigenvalue = float(v @ w)
            total += 1
            scale = top if top is not None else abs(eigenvalue)
            residual = float((w - eigenvalue * v).norm()) / scale if scale > 0 else 0.0
            if callback is not None:
                callback({"vector": index, "iteration": iteration, "eigenvalue": eigenvalue, "residual": residual})
            norm = float(w.norm())
            if norm == 0.0:
                converged, residual = True, 0.0
                break
            streak = streak + 1 if residual <= tol else 0
            v = w / norm
            if streak >= patience:
                converged = True
                break
        u = op.vjp(v.reshape(1, *op.out_shape)).reshape(-1).double()
        sigma = u.norm()
        if top is None:
            top = float(sigma) ** 2
        sigmas.append(sigma)
        rights.append(u / sigma if sigma > 0 else u)
        found_left.append(v)
        all_converged &= converged
        worst = max(worst, residual)
    sigma = torch.stack(sigmas)
    return JacobianSVD(sigma.to(op.dtype), torch.stack(rights).reshape(k, *op.in_shape).to(op.dtype),
                       torch.stack(found_left).reshape(k, *op.out_shape).to(op.dtype), total, all_converged, worst)


def jacobian_directions(op: JacobianOperator, num_vectors: int = 3, method: str = "subspace",
                        **options: Any) -> JacobianSVD:
    """Haas et al.'s image-specific directions: top-k right singular vectors of J = ∂(mask ⊙ ε)/∂h.

    ``method`` is ``"subspace"`` (:func:`subspace_iteration`, the default) or ``"power"``
    (:func:`power_iteration_deflation`); ``options`` go to the solver.
    """
    if method == "subspace":
        return subspace_iteration(op, num_vectors, **options)
    if method == "power":
        return power_iteration_deflation(op, num_vectors, **options)
    raise HSpaceError(f"method 'subspace' or 'power' expected, got {method!r}")


# -- on a diffusion model ------------------------------------------------------------------------------
def eps_of_h(denoiser: Any, x: torch.Tensor, sigma: float) -> tuple[BatchFunction, torch.Tensor]:
    """f(h) = ε(x, σ | mid-block output replaced by h) and h0 = encode(x, σ), for one image x ``[C,H,W]``.

    ``denoiser`` offers ``encode(x, sigma)`` and ``decode_from(x, sigma, h)`` (:class:`DiffusersDenoiser`).
    """
    if x.ndim != 3:
        raise HSpaceError(f"one image x of shape [C, H, W] expected, got {tuple(x.shape)}")
    image = x.unsqueeze(0)
    with torch.no_grad():
        h0 = denoiser.encode(image, sigma)[0]

    def f(h: torch.Tensor) -> torch.Tensor:
        return denoiser.decode_from(image.expand(h.shape[0], *x.shape), sigma, h)

    return f, h0


@dataclass
class TrajectoryJacobian:
    """Haas's directions at every step of one sample's trajectory.

    Attributes:
        right: ``[S, k, C, H, W]`` unit h-space directions; singular_values: ``[S, k]``; sigmas: ``[S]``.
    """

    right: torch.Tensor
    singular_values: torch.Tensor
    sigmas: torch.Tensor
    converged: bool

    def broadcast(self, step_index: int, component: int) -> torch.Tensor:
        """``[S, C, H, W]``: step ``step_index``'s vector at every step, scaled by each step's σ (Haas)."""
        return broadcast_direction(self.right, self.singular_values, step_index, component)


def trajectory_jacobian_directions(denoiser: Any, xs: torch.Tensor, sigmas: Sequence[float] | torch.Tensor,
                                   num_vectors: int = 3, output_mask: torch.Tensor | None = None,
                                   method: str = "subspace", chunk_size: int | None = None,
                                   callback: Callback | None = None, **options: Any) -> TrajectoryJacobian:
    """:func:`jacobian_directions` at every step of a trajectory (Haas: along the unedited sampling run).

    Args:
        xs: ``[S, C, H, W]`` x at each step (k-diffusion units), e.g. from a sampler's callback.
        sigmas: ``[S]`` the sigma of each step.
        output_mask: a pixel mask broadcastable to ``[C, H, W]`` (localised edits), or None.
        callback: ``{"step", "steps"}`` before each step; raise to stop.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if xs.ndim != 4 or xs.shape[0] != sigmas.numel():
        raise HSpaceError(f"xs [S, C, H, W] with one sigma per step expected, got xs {tuple(xs.shape)} and "
                          f"{sigmas.numel()} sigmas")
    rights, values, converged = [], [], True
    for step in range(xs.shape[0]):
        if callback is not None:
            callback({"step": step, "steps": xs.shape[0]})
        f, h0 = eps_of_h(denoiser, xs[step], float(sigmas[step]))
        result = jacobian_directions(JacobianOperator(f, h0, output_mask, chunk_size), num_vectors, method,
                                     **options)
        rights.append(result.right)
        values.append(result.singular_values)
        converged &= result.converged
    return TrajectoryJacobian(torch.stack(rights), torch.stack(values), sigmas, converged)


def broadcast_direction(right: torch.Tensor, singular_values: torch.Tensor, step_index: int,
                        component: int) -> torch.Tensor:
    """Haas's ``global_at_idx``: Δh_t = σ_{k,t} · u_{k,t_idx} for every step t, as ``[S, *h_shape]``.

    Args:
        right: ``[S, k, *h_shape]`` unit directions per step; singular_values: ``[S, k]``.
    """
    steps, k = singular_values.shape
    if right.shape[:2] != (steps, k):
        raise HSpaceError(f"right vectors [S, k, ...] matching singular values {tuple(singular_values.shape)} "
                          f"expected, got {tuple(right.shape)}")
    if not (-steps <= step_index < steps and 0 <= component < k):
        raise HSpaceError(f"step_index in [0, {steps}) and component in [0, {k}) expected, got "
                          f"{step_index}, {component}")
    vector = right[step_index, component]
    return singular_values[:, component].to(vector).view(steps, *[1] * vector.ndim) * vector


def _check_count(k: int, dim: int) -> int:
    if not 1 <= k <= dim:
        raise HSpaceError(f"the number of singular vectors must lie in [1, {dim}] (the input dimension), got {k}")
    return k
