"""Supervised directions and their disentanglement (Haas et al. 2024, ALGORITHMS.md §2.6).

h tensors are ``[n, ...]`` (n samples of any per-sample shape: ``[C, H, W]`` at one step or ``[S, C, H, W]``
over a trajectory); inner products are the plain sum over all elements, as in Haas's code.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..arithmetic import joint_project_out
from ..direction import check_finite
from ..errors import HSpaceError

Callback = Callable[[dict[str, Any]], None]


def mean_difference(h_pos: torch.Tensor, h_neg: torch.Tensor) -> torch.Tensor:
    """n = mean(h_pos) − mean(h_neg) over the sample axis (pairs or unpaired sets), accumulated in float64.

    For paired data (Haas's BU-3DFE expression/neutral pairs) this equals the mean of the differences.
    """
    _check_sets(h_pos, h_neg)
    return (h_pos.double().mean(0) - h_neg.double().mean(0)).to(_float(h_pos))


def top_bottom_k(scores: torch.Tensor | Sequence[float], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the K highest scores (positives, best first) and the K lowest (negatives, lowest first).

    Haas et al. score 10,000 generated samples with an attribute classifier and keep K = 100 each.
    """
    scores = torch.as_tensor(scores).flatten()
    if not torch.isfinite(scores).all():
        raise HSpaceError("the scores contain NaN or Inf values")
    if k < 1 or 2 * k > scores.numel():
        raise HSpaceError(f"K in [1, {scores.numel() // 2}] expected (2K distinct samples out of {scores.numel()}), "
                          f"got K={k}")
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k], order.flip(0)[:k]


def supervised_direction(h: torch.Tensor, scores: torch.Tensor | Sequence[float], k: int = 100) -> torch.Tensor:
    """Haas's classifier-annotated direction: mean h of the top-K scored samples minus that of the bottom-K."""
    scores = torch.as_tensor(scores).flatten()
    if scores.numel() != h.shape[0]:
        raise HSpaceError(f"one score per sample expected: {h.shape[0]} samples, {scores.numel()} scores")
    top, bottom = top_bottom_k(scores, k)
    return mean_difference(h[top], h[bottom])


def linear_probe_direction(h_pos: torch.Tensor, h_neg: torch.Tensor, l2: float = 1e-3, max_iter: int = 100,
                           callback: Callback | None = None) -> torch.Tensor:
    """The unit normal of a logistic-regression boundary between h_pos and h_neg (InterFaceGAN-style).

    An alternative to :func:`mean_difference` that discounts directions of high within-class variance.
    Features are centred and scaled by their overall std; the L2-regularised mean log-loss is minimised
    by L-BFGS in float64 (plain torch), and the weight vector, mapped back to h units, is returned with
    unit norm, pointing from negatives to positives.

    Args:
        l2: the ridge weight on the (standardised) weights; max_iter: L-BFGS iterations.
        callback: ``{"iteration", "loss"}`` per loss evaluation; raise to stop.
    """
    _check_sets(h_pos, h_neg)
    x = torch.cat([h_pos, h_neg]).flatten(1).double()
    y = torch.cat([torch.ones(h_pos.shape[0]), torch.zeros(h_neg.shape[0])]).double()
    mean = x.mean(0)
    scale = (x - mean).std().clamp(min=torch.finfo(torch.float64).tiny)
    features = (x - mean) / scale
    weight = torch.zeros(features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    evaluations = [0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features @ weight + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + l2 * weight.pow(2).sum()
        loss.backward()
        evaluations[0] += 1
        if callback is not None:
            callback({"iteration": evaluations[0], "loss": float(loss)})
        return loss

    optimizer.step(closure)
    normal = weight.detach()
    norm = normal.norm()
    if norm == 0:
        raise HSpaceError("the linear probe found no separating direction (identical classes?)")
    return (normal / norm).reshape(h_pos.shape[1:]).to(_float(h_pos))


def disentangle(direction: torch.Tensor, conditions: Sequence[torch.Tensor] | torch.Tensor,
                rcond: float = 1e-10) -> torch.Tensor:
    """Project the conditions out of a direction jointly: n' = n − Nᵀ(NNᵀ)⁻¹N n (Haas ``get_cond_dir``).

    The rows of N are the flattened condition directions; n' is the orthogonal projection of n onto the
    complement of their span, so ⟨n', c_i⟩ = 0 for every condition at once. Removing the conditions one
    after another (Haas ``get_direction``) is exact only for mutually orthogonal conditions. Computed in
    float64 through the SVD of N (the same projector, stable when the conditions are nearly dependent;
    singular values below ``rcond`` times the largest count as dependence and are dropped).

    Args:
        direction: n, any shape; conditions: tensors of n's shape, or one tensor ``[m, *n.shape]``.
    """
    if isinstance(conditions, torch.Tensor) and conditions.shape == direction.shape:
        conditions = [conditions]
    rows = [torch.as_tensor(c) for c in conditions]
    if not rows:
        return direction.clone()
    for c in rows:
        if c.shape != direction.shape:
            raise HSpaceError(f"conditions of the direction's shape {tuple(direction.shape)} expected, "
                              f"got {tuple(c.shape)}")
    n = check_finite(direction, "the direction").reshape(-1).to(_float(direction))
    matrix = check_finite(torch.stack(rows), "the conditions").reshape(len(rows), -1)
    return joint_project_out(n, matrix, rcond).reshape(direction.shape)


def _check_sets(h_pos: torch.Tensor, h_neg: torch.Tensor) -> None:
    if h_pos.ndim < 2 or h_neg.ndim < 2 or h_pos.shape[1:] != h_neg.shape[1:]:
        raise HSpaceError(f"two sets of h [n, ...] with the same per-sample shape expected, got "
                          f"{tuple(h_pos.shape)} and {tuple(h_neg.shape)}")
    if h_pos.shape[0] == 0 or h_neg.shape[0] == 0:
        raise HSpaceError("both sets need at least one sample")
    check_finite(h_pos, "the positive h")
    check_finite(h_neg, "the negative h")


def _float(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32
