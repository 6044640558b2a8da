"""hspace files: safetensors with JSON metadata in the header, written atomically. Never pickle."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .direction import Direction, Trajectory
from .errors import HSpaceError

FORMAT_KEY = "hspace_format"
FORMAT_VERSION = "1"


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, kind: str, meta: dict[str, Any]) -> Path:
    """Write a safetensors file through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {FORMAT_KEY: kind, "hspace_format_version": FORMAT_VERSION, "meta": json.dumps(meta)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=header)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a direction file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sniff(path: Path) -> None:
    """Refuse pickles early. A safetensors file starts with the 8-byte length of its JSON header, then "{"."""
    if not path.is_file():
        raise HSpaceError(f"no file at {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    header_length = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    looks_like_safetensors = head[8:9] == b"{" and 0 < header_length <= path.stat().st_size - 8
    if not looks_like_safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise HSpaceError(f"{path.name} is a pickle / torch.save file; hspace reads only .safetensors files "
                          "(pickles can run code when loaded)")


def read_header(path: str | os.PathLike, kind: str) -> tuple[dict[str, Any], Any]:
    """The metadata of an hspace file of ``kind``, and an open safetensors handle; clear errors otherwise."""
    path = Path(path)
    _sniff(path)
    try:
        handle = safe_open(str(path), framework="pt")
        header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise HSpaceError(f"{path.name} is not a readable safetensors file (corrupt or truncated?): {err}") from None
    if header.get(FORMAT_KEY) != kind:
        found = header.get(FORMAT_KEY, "no hspace metadata")
        raise HSpaceError(f"{path.name} is not an hspace {kind} file (found: {found})")
    try:
        meta = json.loads(header.get("meta", "{}"))
    except json.JSONDecodeError:
        raise HSpaceError(f"{path.name} has corrupt hspace metadata") from None
    return meta, handle


def _get(handle: Any, name: str, path: Path) -> torch.Tensor:
    try:
        return handle.get_tensor(name)
    except (SafetensorError, KeyError) as err:
        raise HSpaceError(f"{path.name} lacks the tensor {name!r} or it is corrupt: {err}") from None


def save_direction(direction: Direction, path: str | os.PathLike) -> Path:
    tensors = {"delta": direction.delta}
    if direction.per_timestep:
        tensors["timesteps"] = torch.tensor(direction.timesteps, dtype=torch.float64)
    return atomic_save(tensors, path, "direction", direction.meta)


def load_direction(path: str | os.PathLike) -> Direction:
    meta, handle = read_header(path, "direction")
    delta = _get(handle, "delta", Path(path))
    timesteps = _get(handle, "timesteps", Path(path)).tolist() if "timesteps" in handle.keys() else None
    return Direction(delta, timesteps, meta)


def save_trajectory(trajectory: Trajectory, path: str | os.PathLike) -> Path:
    tensors = {"h": trajectory.h, "timesteps": trajectory.timesteps, "sigmas": trajectory.sigmas}
    return atomic_save(tensors, path, "trajectory", trajectory.meta)


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    path = Path(path)
    if path.is_dir():
        return ShardedTrajectory(path).load()
    meta, handle = read_header(path, "trajectory")
    return Trajectory(_get(handle, "h", path), _get(handle, "timesteps", path), _get(handle, "sigmas", path), meta)


class TrajectoryWriter:
    """Stream a large capture to a folder of safetensors shards (one per appended chunk of samples)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []
        self.first: Trajectory | None = None

    def append(self, chunk: Trajectory) -> None:
        if self.first is None:
            self.first = chunk
        elif chunk.h.shape[1:] != self.first.h.shape[1:] or not torch.equal(chunk.timesteps, self.first.timesteps):
            raise HSpaceError("every shard of a trajectory must have the same steps and h shape")
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_trajectory(chunk, self.folder / name)
        self.shards.append(name)

    def close(self) -> "ShardedTrajectory":
        if self.first is None:
            raise HSpaceError("the capture is empty: nothing was appended")
        index = {FORMAT_KEY: "trajectory-shards", "shards": self.shards, "meta": self.first.meta}
        tmp = self.folder / ".index.json.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.folder / "index.json")
        return ShardedTrajectory(self.folder)


class ShardedTrajectory:
    """A trajectory on disk, read one shard at a time (bounded memory)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            index = json.loads((self.folder / "index.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HSpaceError(f"{self.folder} is not a sharded hspace trajectory: {err}") from None
        if index.get(FORMAT_KEY) != "trajectory-shards":
            raise HSpaceError(f"{self.folder}/index.json is not an hspace trajectory index")
        self.shards = [self.folder / name for name in index["shards"]]

    def iter_chunks(self) -> Iterator[Trajectory]:
        for shard in self.shards:
            yield load_trajectory(shard)

    def load(self) -> Trajectory:
        return Trajectory.concat(list(self.iter_chunks()))
