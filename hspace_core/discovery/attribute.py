"""Supervised directions that change one attribute, disentangled by construction (issue 13).

Two confounds spoil Haas's top-K minus bottom-K direction on generated samples (docs/DISCOVERY.md,
"Disentangled attribute directions"):

- **the starting noise**: an attribute of a generated image is partly set by statistics of its x_T (its
  brightness, where its energy sits), and h at the early steps is a function of x_t ≈ x_T, so the mean
  difference follows the noise. :func:`noise_residual_scores` regresses the scores on coarse statistics of
  x_T (:func:`noise_statistics`) and keeps the residual: what the noise cannot predict.
- **the class**: the top-K and the bottom-K hold different mixes of classes. :func:`stratified_mean_difference`
  takes top minus bottom within each class (any nuisance label) and averages over the classes.

:func:`attribute_direction` chains both with the joint projection against nuisance directions
(:func:`~hspace_core.discovery.supervised.disentangle`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..checks import check_finite
from ..errors import HSpaceError
from .supervised import disentangle, mean_difference


def _scores(scores: torch.Tensor | Sequence[float], count: int, what: str = "scores") -> torch.Tensor:
    scores = torch.as_tensor(scores).flatten().double()
    if scores.numel() != count:
        raise HSpaceError(f"one {what[:-1]} per sample expected: {count} samples, {scores.numel()} {what}")
    if not torch.isfinite(scores).all():
        raise HSpaceError(f"the {what} contain NaN or Inf values")
    return scores


def noise_statistics(x_T: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """``[N, C·grid²]``: x_T averaged over a grid × grid tiling of the image (its brightness and where it sits).

    These coarse moments of the starting noise are what the model carries into the image (a bright or
    top-heavy x_T gives an inky or top-heavy digit); per-pixel noise averages out.
    """
    if x_T.ndim != 4:
        raise HSpaceError(f"x_T [N, C, H, W] expected, got shape {list(x_T.shape)}")
    if x_T.shape[-1] < grid or x_T.shape[-2] < grid or grid < 1:
        raise HSpaceError(f"a grid of 1..{min(x_T.shape[-2:])} cells per side expected for x_T of shape "
                          f"{list(x_T.shape)}, got {grid}")
    check_finite(x_T, "x_T")
    return torch.nn.functional.adaptive_avg_pool2d(x_T.detach().double().cpu(), grid).flatten(1)


def noise_residual_scores(scores: torch.Tensor | Sequence[float], x_T: torch.Tensor, grid: int = 4,
                          l2: float = 1e-6) -> torch.Tensor:
    """The scores minus their least-squares prediction from :func:`noise_statistics` of x_T (with an intercept).

    Ridge ``l2`` (relative to the features' mean square) only keeps the solve stable; with many more samples
    than features (N ≫ C·grid²) it changes nothing.
    """
    features = noise_statistics(x_T, grid)
    scores = _scores(scores, features.shape[0])
    if features.shape[0] <= features.shape[1] + 1:
        raise HSpaceError(f"more samples than noise statistics expected to regress on them: {features.shape[0]} "
                          f"samples, {features.shape[1]} statistics (grid {grid}); use more samples or a smaller grid")
    design = torch.cat([torch.ones(len(features), 1, dtype=torch.float64), features - features.mean(0)], dim=1)
    gram = design.T @ design
    ridge = l2 * gram.diagonal()[1:].mean() * torch.eye(len(gram), dtype=torch.float64)
    ridge[0, 0] = 0
    coefficients = torch.linalg.solve(gram + ridge, design.T @ scores)
    return scores - design @ coefficients


def stratified_mean_difference(h: torch.Tensor, scores: torch.Tensor | Sequence[float],
                               groups: torch.Tensor | Sequence[int], fraction: float = 0.25,
                               min_group: int = 8, per_std: bool = False) -> torch.Tensor:
    """Top-scored minus bottom-scored mean h within each group, averaged over groups weighted by their size.

    Within a group of n samples the top and bottom ``max(1, round(fraction·n))`` are compared, so every
    difference compares like with like (one class, say); groups under ``min_group`` samples are skipped.
    ``per_std``: divided by the same average of the groups' score gaps (top mean − bottom mean) in units of the
    scores' std, so strength 1 is the h change that comes with one std of the score (a slope, not a gap).
    """
    if h.ndim < 2 or h.shape[0] == 0:
        raise HSpaceError(f"h [n, ...] with at least one sample expected, got shape {list(h.shape)}")
    scores = _scores(scores, h.shape[0])
    groups = torch.as_tensor(groups).flatten()
    if groups.numel() != h.shape[0]:
        raise HSpaceError(f"one group label per sample expected: {h.shape[0]} samples, {groups.numel()} labels")
    if groups.is_floating_point() and not torch.isfinite(groups).all():
        raise HSpaceError("the group labels contain NaN or Inf values")
    if not 0 < fraction <= 0.5:
        raise HSpaceError(f"a fraction in (0, 0.5] of each group expected, got {fraction}")
    if min_group < 2:
        raise HSpaceError(f"min_group of at least 2 expected (a top and a bottom sample), got {min_group}")
    total, weight, gap = None, 0, 0.0
    for group in groups.unique():
        rows = (groups == group).nonzero().flatten()
        if len(rows) < min_group:
            continue
        k = max(1, round(fraction * len(rows)))
        order = rows[torch.argsort(scores[rows], descending=True, stable=True)]
        difference = mean_difference(h[order[:k]], h[order[-k:]]).double() * len(rows)
        total = difference if total is None else total + difference
        weight += len(rows)
        gap += float(scores[order[:k]].mean() - scores[order[-k:]].mean()) * len(rows)
    if total is None:
        sizes = torch.bincount(torch.unique(groups, return_inverse=True)[1]).tolist()
        raise HSpaceError(f"at least one group of {min_group} or more samples expected, got group sizes {sizes}")
    if per_std:
        if not gap > 0:
            raise HSpaceError("per_std: the scores are constant within every group; there is no gap to scale by")
        weight = gap / float(scores.std())
    return (total / weight).to(h.dtype if h.is_floating_point() else torch.float32)


def attribute_direction(h: torch.Tensor, scores: torch.Tensor | Sequence[float],
                        groups: torch.Tensor | Sequence[int] | None = None, x_T: torch.Tensor | None = None,
                        nuisance: Sequence[torch.Tensor] = (), fraction: float = 0.25, min_group: int = 8,
                        noise_grid: int = 4, per_std: bool = True) -> torch.Tensor:
    """A supervised direction for one attribute with the confounds taken out, each step optional:

    1. ``x_T`` given (generated samples): scores → :func:`noise_residual_scores`;
    2. ``groups`` given (e.g. the classifier's class): :func:`stratified_mean_difference`, else the plain top
       minus bottom ``fraction`` of all samples;
    3. ``nuisance`` directions (of one sample's h shape) projected out jointly (:func:`disentangle`).

    ``per_std`` (default): strength 1 is one std of the (residual) score, see :func:`stratified_mean_difference`.
    """
    scores = _scores(scores, h.shape[0] if h.ndim else 0)
    if x_T is not None:
        if x_T.shape[0] != h.shape[0]:
            raise HSpaceError(f"one x_T per sample expected: {h.shape[0]} samples of h, {x_T.shape[0]} of x_T")
        scores = noise_residual_scores(scores, x_T, noise_grid)
    if groups is None:
        groups = torch.zeros(h.shape[0], dtype=torch.long)
    direction = stratified_mean_difference(h, scores, groups, fraction, min_group, per_std)
    return disentangle(direction, list(nuisance)) if len(nuisance) else direction
