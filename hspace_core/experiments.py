"""Measurements of edit quality on a labelled model: shared by the demo, the semantic tests and the figures.

A classifier (any callable with ``predict(images) -> (labels, confidence)``) judges the images.
"""
from __future__ import annotations

from typing import Any

import torch

from .arithmetic import random_like
from .bottleneck import EditSpec
from .direction import Direction, Trajectory
from .errors import HSpaceError
from .pipeline import HSpacePipeline, Inversion


def balanced_subset(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` samples taking the classes in turn (the first of each class, then the second...)."""
    rank = torch.empty_like(labels)
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        rank[rows] = torch.arange(len(rows))
    order = sorted(range(len(labels)), key=lambda i: (int(rank[i]), int(labels[i])))
    return torch.tensor(order[:count])


def class_means(trajectory: Trajectory, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Per-class mean h at every step: ``[num_classes, S, C, H, W]``."""
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise HSpaceError(f"every class needs at least one sample for class means; none of class {missing}")
    return torch.stack([trajectory.h[labels == c].mean(0) for c in range(num_classes)])


def class_direction(means: torch.Tensor, source: int, target: int, timesteps: list[float],
                    fingerprint: dict | None = None) -> Direction:
    """The per-timestep mean difference from one class to another (Haas et al., labelled real images)."""
    return Direction(means[target] - means[source], timesteps,
                     {"method": "class mean difference", "source": source, "target": target,
                      "fingerprint": fingerprint})


def cyclic_targets(labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """A target class for each sample, never its own, spread evenly over the other classes."""
    return (labels + 1 + torch.arange(len(labels)) % (num_classes - 1)) % num_classes


def edit_groups(pipe: HSpacePipeline, x_T: torch.Tensor, sigmas: torch.Tensor, groups: dict[Any, tuple],
                strength: float = 1.0, t_edit: float = 0.0, baseline_seed: int | None = None, **edit_kwargs) -> torch.Tensor:
    """Edit each group of samples ``{key: (rows, direction)}`` with its own direction, all in one batched run;
    with ``baseline_seed`` a random direction of the same per-step norm replaces each one (the baseline)."""
    edits = [EditSpec(direction if baseline_seed is None else random_like(direction, baseline_seed + i), strength, rows)
             for i, (rows, direction) in enumerate(groups.values())]
    return pipe.edit(x_T, sigmas, edits, t_edit=t_edit, **edit_kwargs)


def class_transfer_groups(pipe: HSpacePipeline, inversion: Inversion, labels: torch.Tensor,
                          targets: torch.Tensor, num_classes: int = 10,
                          fit: tuple[Trajectory, torch.Tensor] | None = None) -> dict[tuple[int, int], tuple]:
    """Groups of inverted samples by (source, target) class, each with its class-to-class direction.

    The class means come from ``fit = (trajectory, labels)``, other samples than the edited ones (out of sample),
    or by default from the edited samples' own inversion (in sample).
    """
    trajectory, fit_labels = fit if fit is not None else (inversion.trajectory, labels)
    means = class_means(trajectory, fit_labels, num_classes)
    keys = trajectory.timesteps.tolist()
    groups = {}
    for s in range(num_classes):
        for t in range(num_classes):
            rows = ((labels == s) & (targets == t)).nonzero().flatten()
            if len(rows):
                groups[(s, t)] = (rows, class_direction(means, s, t, keys, pipe.fingerprint))
    return groups


def class_transfer_hit_rate(pipe: HSpacePipeline, classifier: Any, inversion: Inversion, labels: torch.Tensor,
                            strength: float = 1.0, fit: tuple[Trajectory, torch.Tensor] | None = None,
                            baseline_seed: int | None = None) -> float:
    """Every inverted sample edited towards another class (:func:`cyclic_targets`) by the class-mean difference
    (fitted on ``fit``, see :func:`class_transfer_groups`), or by a random direction of the same per-step norm
    (``baseline_seed``): the share the classifier assigns to the target class."""
    targets = cyclic_targets(labels)
    groups = class_transfer_groups(pipe, inversion, labels, targets, fit=fit)
    edited = edit_groups(pipe, inversion.x_T, inversion.sigmas, groups, strength, baseline_seed=baseline_seed)
    return hit_rate(classifier, edited, targets)


def hit_rate(classifier: Any, images: torch.Tensor, targets: torch.Tensor) -> float:
    """The fraction of images the classifier assigns to their target class."""
    return float((classifier.predict(images)[0] == targets).float().mean())


def change_rate(classifier: Any, images: torch.Tensor, reference_labels: torch.Tensor) -> float:
    """The fraction of images whose predicted class differs from the reference labels."""
    return float((classifier.predict(images)[0] != reference_labels).float().mean())
