"""Saves and captures killed with SIGKILL at random moments: the destination is the old content or the new, whole;
a direction set is never mixed; a capture is never visible half-written; the next save removes what was left."""
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from hspace_core.direction import Direction, Trajectory
from hspace_core.fileio import (TEMP_SUFFIX, PARTIAL_SUFFIX, TrajectoryWriter, clean_abandoned, load_directions,
                                load_trajectory, save_directions, save_trajectory)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="SIGKILL of a forked writer needs POSIX")

TRIALS = 24


def contents(seed: int):
    g = torch.Generator().manual_seed(seed)
    directions = [Direction(torch.randn(10, 64, 8, 8, generator=g), list(range(900, -1, -100)), {"component": i})
                  for i in range(3)]
    trajectory = Trajectory(torch.randn(16, 10, 64, 8, 8, generator=g), list(range(900, -1, -100)),
                            [float(s) for s in range(10, 0, -1)], {"seeds": list(range(16))})  # 2.6 MB
    return directions, trajectory


def writer_loop(folder: Path, versions) -> None:
    """Save and capture forever, alternating between two contents (runs in the forked child until killed)."""
    torch.set_num_threads(1)
    k = 0
    while True:
        directions, trajectory = versions[k % 2]
        save_directions(directions, folder / "set.safetensors")
        save_trajectory(trajectory, folder / "trajectory.safetensors")
        writer = TrajectoryWriter(folder / "captures" / ("same" if k % 2 else f"c{k}"))
        for part in trajectory.h.split(4):
            writer.append(Trajectory(part, trajectory.timesteps, trajectory.sigmas, trajectory.meta))
        writer.close()
        k += 1


def leftovers(folder: Path) -> list[Path]:
    """Hidden temporaries with something in them."""
    found = []
    for path in folder.rglob("*"):
        if path.name.endswith(TEMP_SUFFIX) or (path.name.endswith(PARTIAL_SUFFIX) and any(path.iterdir())):
            found.append(path)
    return found


def test_saves_killed_at_random_moments_leave_old_or_new_and_nothing_after_the_next_save(tmp_path):
    versions = [contents(1), contents(2)]
    sets = [[d.delta for d in v[0]] for v in versions]
    rng = random.Random(14)
    killed_mid_write = 0
    for trial in range(TRIALS):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                writer_loop(tmp_path, versions)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed_mid_write += bool(leftovers(tmp_path))
        if (tmp_path / "set.safetensors").exists():
            loaded = [d.delta for d in load_directions(tmp_path / "set.safetensors")]
            assert any(all(torch.equal(a, b) for a, b in zip(loaded, s)) for s in sets), "a mixed or partial set"
        if (tmp_path / "trajectory.safetensors").exists():
            h = load_trajectory(tmp_path / "trajectory.safetensors").h
            assert any(torch.equal(h, v[1].h) for v in versions)
        captures = tmp_path / "captures"
        for folder in (captures.iterdir() if captures.exists() else ()):
            if not folder.name.startswith("."):
                h = load_trajectory(folder).h
                assert any(torch.equal(h, v[1].h) for v in versions), f"{folder.name} is not a whole capture"
        for folder in (tmp_path, captures):
            clean_abandoned(folder)  # what the next save or capture into the folder does first
        assert leftovers(tmp_path) == [], f"trial {trial}: left behind after cleaning"
    print(f"{TRIALS} kills, {killed_mid_write} landed while a temporary was on disk")
    assert killed_mid_write > 0  # the kills did hit writes in progress, or this test tested nothing
