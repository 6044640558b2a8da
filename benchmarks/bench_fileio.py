"""Cost of crash safety and corruption checks in hspace files, measured in one run.

Prints median wall times over repeats of: saving a trajectory of --mb megabytes and a small direction with the
flush + fsync before the rename (as shipped) and without it; computing the content sha256 alone; loading and
reading every value (safetensors maps the file lazily, so a load alone reads nothing) with the checksum verified
(as shipped) and without. Ratios are against the unchecked / unsynced variant. Run it on the disk
the files will live on (--folder): fsync on tmpfs costs nothing.

    python benchmarks/bench_fileio.py [--mb 300] [--repeats 3] [--folder .bench_fileio]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from hspace_core import fileio
from hspace_core.direction import Direction, Trajectory


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def without(name: str, replacement: Callable, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with ``fileio.<name>`` (or ``os.fsync``) replaced for its duration."""
    def run() -> object:
        target = os if name == "fsync" else fileio
        original = getattr(target, name)
        setattr(target, name, replacement)
        try:
            return fn()
        finally:
            setattr(target, name, original)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=".bench_fileio")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True).stdout.splitlines()[-1:]
    print(f"folder {folder.resolve()} ({' '.join(fs[0].split()[:2]) if fs else 'unknown filesystem'})")
    steps, shape = 20, (512, 8, 8)
    samples = max(1, args.mb * 2 ** 20 // (4 * steps * 512 * 64))
    trajectory = Trajectory(torch.randn(samples, steps, *shape), torch.linspace(999, 0, steps),
                            torch.linspace(10, 0.1, steps), {"seeds": list(range(samples))})
    direction = Direction(torch.randn(steps, *shape), list(range(steps)), {"method": "bench"})
    size_mb = trajectory.h.numel() * 4 / 2 ** 20
    big, small = folder / "trajectory.safetensors", folder / "direction.safetensors"
    tensors = {"h": trajectory.h, "timesteps": trajectory.timesteps, "sigmas": trajectory.sigmas}
    no_fsync = lambda fd: None  # noqa: E731
    rows = [
        (f"save trajectory {size_mb:.0f} MB",
         median_time(lambda: fileio.save_trajectory(trajectory, big), args.repeats),
         median_time(without("fsync", no_fsync, lambda: fileio.save_trajectory(trajectory, big)), args.repeats),
         "with fsync / without"),
        ("save direction 0.6 MB", median_time(lambda: fileio.save_direction(direction, small), 10 * args.repeats),
         median_time(without("fsync", no_fsync, lambda: fileio.save_direction(direction, small)), 10 * args.repeats),
         "with fsync / without"),
        (f"load + read {size_mb:.0f} MB", median_time(lambda: fileio.load_trajectory(big).h.sum(), args.repeats),
         median_time(without("_verify", lambda *a, **k: None, lambda: fileio.load_trajectory(big).h.sum()),
                     args.repeats), "checksum verified / not"),
    ]
    hash_time = median_time(lambda: fileio.content_hash("trajectory", trajectory.meta, tensors), args.repeats)
    for label, shipped, bare, what in rows:
        print(f"{label:28s} {shipped * 1000:9.1f} ms  vs {bare * 1000:9.1f} ms  ratio {shipped / bare:5.2f}  ({what})")
    print(f"{'sha256 of the trajectory':28s} {hash_time * 1000:9.1f} ms  = {size_mb / hash_time:.0f} MB/s "
          f"(paid once on save and once on load)")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
