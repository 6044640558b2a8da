"""Direction arithmetic. The inner product is the plain sum over all elements (Haas et al.).

Degenerate cases are defined, not left to rounding: what remains of a projection is exactly zero when it is
below :data:`RESIDUAL_RTOL` of the input's norm (float32 rounding, e.g. a direction projected out of itself),
so normalizing it is refused as a zero direction; slerp of opposite directions (no unique great circle) is refused.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .checks import check_number
from .direction import Direction
from .errors import HSpaceError


# Directions are float32: a projection residual below this fraction of the input's norm is rounding, not signal.
RESIDUAL_RTOL = 1e-5
# |cos| of the angle beyond which two unit directions count as opposite (sin(omega) below about 1e-4).
OPPOSITE_COS = 1 - 5e-9


def _aligned(a: Direction, b: Direction) -> tuple[torch.Tensor, torch.Tensor, tuple[float, ...] | None]:
    """Both tensors on common timestep keys (a global direction is broadcast over the other's keys)."""
    if a.meta["hook_site"] != b.meta["hook_site"]:
        raise HSpaceError(f"directions made at different hook sites: {a.meta['hook_site']!r} and "
                          f"{b.meta['hook_site']!r}")
    if a.h_shape != b.h_shape:
        raise HSpaceError(f"directions of different h shapes: {list(a.h_shape)} and {list(b.h_shape)}")
    if a.per_timestep and b.per_timestep:
        if len(a.timesteps) != len(b.timesteps) or any(abs(x - y) > 0.5 for x, y in zip(a.timesteps, b.timesteps)):
            return a.delta, torch.stack([b.at(t) for t in a.timesteps]), a.timesteps
        return a.delta, b.delta, a.timesteps
    if a.per_timestep:
        return a.delta, b.delta.expand_as(a.delta), a.timesteps
    if b.per_timestep:
        return a.delta.expand_as(b.delta), b.delta, b.timesteps
    return a.delta, b.delta, None


def _combine(a: Direction, delta: torch.Tensor, timesteps, op: str) -> Direction:
    return Direction(delta, timesteps, {**a.meta, "method": op})


def add(a: Direction, b: Direction) -> Direction:
    x, y, keys = _aligned(a, b)
    return _combine(a, x + y, keys, f"add({a.meta.get('method')}, {b.meta.get('method')})")


def subtract(a: Direction, b: Direction) -> Direction:
    x, y, keys = _aligned(a, b)
    return _combine(a, x - y, keys, f"subtract({a.meta.get('method')}, {b.meta.get('method')})")


def scale(a: Direction, factor: float) -> Direction:
    return a.with_delta(a.delta * check_number(factor, "the scale factor"))


def norm(a: Direction) -> float:
    return float(a.delta.double().norm())


def normalize(a: Direction, per_timestep: bool = False) -> Direction:
    """Unit norm over the whole tensor, or for each timestep's slice separately."""
    if per_timestep and a.per_timestep:
        norms = a.delta.flatten(1).norm(dim=1).view(-1, *[1] * a.rank)
    else:
        norms = a.delta.norm()
    if (norms == 0).any():
        raise HSpaceError("cannot normalize a zero direction (nothing is left of it, e.g. after projecting it out "
                          "of a span that contains it)")
    return a.with_delta(a.delta / norms, units="unit")


def cosine(a: Direction, b: Direction) -> float:
    x, y, _ = _aligned(a, b)
    x, y = x.double().flatten(), y.double().flatten()
    denom = x.norm() * y.norm()
    if denom == 0:
        raise HSpaceError("the cosine of a zero direction is undefined")
    return float(x @ y / denom)


def joint_project_out(n: torch.Tensor, conditions: torch.Tensor, rcond: float = 1e-10) -> torch.Tensor:
    """``n - N^T (N N^T)^-1 N n`` for flat n [d] and conditions N [k, d]: the exact joint projection.

    Computed in float64 through the SVD of N (the same projector, stable when conditions are nearly
    dependent: singular values below ``rcond`` times the largest count as dependence and are dropped).
    A residual below ``RESIDUAL_RTOL`` of the norm of n (n lies in the span, up to rounding) is returned as zeros.
    """
    _, singular, basis = torch.linalg.svd(conditions.double(), full_matrices=False)
    basis = basis[singular > rcond * float(singular.max())]
    n64 = n.double()
    residual = n64 - basis.T @ (basis @ n64)
    if residual.norm() <= RESIDUAL_RTOL * n64.norm():
        residual.zero_()
    return residual.to(n.dtype)


def project_out(a: Direction, conditions: Sequence[Direction]) -> Direction:
    """Remove from ``a`` the span of all ``conditions`` at once (not one by one: that is exact only when
    the conditions are mutually orthogonal)."""
    if not conditions:
        return a
    flats, keys = [], None
    for c in conditions:
        x, y, keys = _aligned(a, c)
        flats.append(y.flatten())
    base = _aligned(a, conditions[0])[0]
    result = joint_project_out(base.flatten(), torch.stack(flats)).view_as(base)
    return _combine(a, result, keys, f"project_out({a.meta.get('method')})")


def orthogonalize(directions: Sequence[Direction]) -> list[Direction]:
    """Gram-Schmidt: each direction minus its projection on the ones before it (norms not rescaled)."""
    result: list[Direction] = []
    for d in directions:
        result.append(project_out(d, result) if result else d)
    return result


def slerp(a: Direction, b: Direction, t: float) -> Direction:
    """Spherical interpolation of the unit directions, with the norm interpolated linearly."""
    check_number(t, "the slerp position t")
    x, y, keys = _aligned(a, b)
    nx, ny = x.double().norm(), y.double().norm()
    if nx == 0 or ny == 0:
        raise HSpaceError("cannot slerp a zero direction")
    ux, uy = x.double() / nx, y.double() / ny
    cos = float((ux * uy).sum())
    if cos < -OPPOSITE_COS:
        raise HSpaceError("slerp of opposite directions is undefined (every great circle joins them): "
                          "directions that are not exactly opposite expected")
    omega = math.acos(max(-1.0, min(1.0, cos)))
    if omega < 1e-6:
        unit = (1 - t) * ux + t * uy
    else:
        unit = (math.sin((1 - t) * omega) * ux + math.sin(t * omega) * uy) / math.sin(omega)
    return _combine(a, (unit * ((1 - t) * nx + t * ny)).float(), keys, "slerp")


def random_like(a: Direction, seed: int = 0) -> Direction:
    """A Gaussian random direction with the same norm as ``a`` at every timestep: the baseline of edit tests."""
    noise = torch.randn(a.delta.shape, generator=torch.Generator().manual_seed(seed))
    if a.per_timestep:
        scale = a.delta.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
        noise = noise * scale.view(-1, *[1] * a.rank)
    else:
        noise = noise * a.delta.norm() / noise.norm()
    return a.with_delta(noise, method="random", seed=seed)
