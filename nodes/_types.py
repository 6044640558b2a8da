"""The custom socket types of the pack and the Python values that travel on them.

- ``HSPACE_TRAJECTORY``: a :class:`hspace_core.direction.Trajectory` (h of N samples over S steps).
- ``HSPACE_DIRECTION``: always a ``list`` of :class:`hspace_core.direction.Direction`, one or more. A single
  direction is a list of one; discovery nodes return a set (PCA components, Jacobian vectors) on the same
  socket, so a set can go straight to Orthogonalize / Project Out / Save, and Pick Direction takes one out.
  Nodes that need exactly one direction refuse a longer set with a message naming Pick Direction.
- ``HSPACE_NOISE``: a :class:`NoiseRecord`, what an inversion leaves to reproduce its image exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError

TRAJECTORY = "HSPACE_TRAJECTORY"
DIRECTION = "HSPACE_DIRECTION"
NOISE = "HSPACE_NOISE"

DirectionSet = list[Direction]


@dataclass
class NoiseRecord:
    """The start x_T (model space, sigma-scaled), the generation sigmas and, for eta > 0, the noise terms.

    ``sample_ddim(model, x_T, sigmas, eta=eta, noises=noises)`` reproduces the inverted image.
    """

    x_T: torch.Tensor
    sigmas: torch.Tensor
    noises: list[torch.Tensor] | None
    eta: float
    method: str


def as_set(directions: Direction | Sequence[Direction]) -> DirectionSet:
    """A direction set from one direction or a sequence of them; an empty set is refused."""
    result = [directions] if isinstance(directions, Direction) else list(directions)
    if not result:
        raise HSpaceError("an empty direction set came: at least one direction expected")
    for item in result:
        if not isinstance(item, Direction):
            raise HSpaceError(f"an {DIRECTION} (a list of directions) expected, got an item of type "
                              f"{type(item).__name__}")
    return result


def single(directions: DirectionSet, what: str = "direction") -> Direction:
    """The one direction of a set of one; a longer set is refused with a hint."""
    items = as_set(directions)
    if len(items) != 1:
        raise HSpaceError(f"one {what} expected, but this set holds {len(items)} directions: take one out "
                          "with 'Pick Direction (hspace)'")
    return items[0]
