"""The custom socket types of the pack and the Python values that travel on them.

- ``HSPACE_TRAJECTORY``: a :class:`hspace_core.direction.Trajectory` (h of N samples over S steps, in memory), or
  a :class:`hspace_core.fileio.ShardedTrajectory` (the same on disk, read a shard at a time) from a capture to disk.
- ``HSPACE_DIRECTION``: always a ``list`` of :class:`hspace_core.direction.Direction`, one or more. A single
  direction is a list of one; discovery nodes return a set (PCA components, Jacobian vectors) on the same
  socket, so a set can go straight to Orthogonalize / Project Out / Save, and Pick Direction takes one out.
  Nodes that need exactly one direction refuse a longer set with a message naming Pick Direction.
- ``HSPACE_NOISE``: a :class:`hspace_core.direction.Inversion`, what an inversion leaves to reproduce its image
  exactly (the same record as the library's ``HSpacePipeline.invert``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence, Union

import torch

from ..hspace_core.direction import Direction, Trajectory
from ..hspace_core.errors import HSpaceError
from ..hspace_core.fileio import ShardedTrajectory

TRAJECTORY = "HSPACE_TRAJECTORY"
DIRECTION = "HSPACE_DIRECTION"
NOISE = "HSPACE_NOISE"

DirectionSet = list[Direction]
TrajectoryValue = Union[Trajectory, ShardedTrajectory]



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


def in_memory(trajectory: TrajectoryValue) -> Trajectory:
    """The whole trajectory in memory (a sharded one is read completely)."""
    return trajectory.load() if isinstance(trajectory, ShardedTrajectory) else trajectory


def first_chunk(trajectory: TrajectoryValue) -> Trajectory:
    """The trajectory itself, or the first shard of one on disk (its steps and metadata stand for all)."""
    if isinstance(trajectory, ShardedTrajectory):
        return next(iter(trajectory.iter_chunks()))
    return trajectory


def h_source(trajectory: TrajectoryValue) -> Trajectory | Callable[[], Iterator[torch.Tensor]]:
    """What hspace_core's PCA reads: the trajectory, or a fresh iterator over the shards' h on every call."""
    if isinstance(trajectory, ShardedTrajectory):
        return lambda: (chunk.h for chunk in trajectory.iter_chunks())
    return trajectory
