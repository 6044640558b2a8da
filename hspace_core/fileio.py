"""hspace files: safetensors with JSON metadata in the header, written crash-safe, checked on load. Never pickle.

Format 2 (format 1 files, from before it, still load, with a warning, since they carry no checksum):

- the safetensors metadata holds one key, ``hspace``: canonical JSON (sorted keys) of ``{"format": kind,
  "version": 2, "meta": ..., "sha256": ...}``. One key, because safetensors writes its metadata map in a
  different order on every run; with one key and sorted JSON the same content gives the same bytes.
- ``sha256`` covers the kind, the metadata and every tensor's name, dtype, shape and bytes, so a flipped bit
  or an edited header field is refused on load instead of loading as other content.
- a direction file holds a set of k >= 1 directions (tensors ``delta.i`` and, per-timestep, ``timesteps.i``;
  ``meta`` is the list of their metadata), so that a set is saved whole or not at all.

Writes go to a hidden, locked temporary file in the destination folder, are flushed and fsynced, and are then
renamed over the destination (and the folder fsynced), so a completed save survives a power loss and a killed
one leaves the destination as it was. The temporary file of a killed save is removed by the next save into the
same folder (its lock died with the process). A capture to disk is written in a hidden folder that one rename
makes visible when its index is complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .direction import Direction, Trajectory
from .errors import HSpaceError

try:
    import fcntl
except ImportError:  # Windows: a file another process holds open cannot be deleted, which is the lock we need
    fcntl = None

FORMAT_KEY = "hspace"
FORMAT_VERSION = 2
V1_FORMAT_KEY = "hspace_format"
INDEX_KIND = "trajectory-shards"
INDEX_NAME = "index.json"
TEMP_SUFFIX = ".hspace-tmp"
PARTIAL_SUFFIX = ".hspace-partial"
LOCK_NAME = ".lock"
SHARD_PATTERN = re.compile(r"shard_\d{5}\.safetensors")
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself applies
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# ---------------------------------------------------------------- writing

def _writable_folder(folder: Path) -> None:
    """Create ``folder``; a path through a file or a folder without write permission is a clear error."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise HSpaceError(f"cannot save in {folder}: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HSpaceError(f"cannot create the folder {folder}: {err.strerror or err}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HSpaceError(f"cannot save in {folder}: the folder is not writable")


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of an open file without waiting; False when a live process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _abandoned(path: Path, remove: Callable[[], None]) -> None:
    """Run ``remove`` if no live process holds ``path`` (a temporary file, or the lock file of a partial folder)."""
    if fcntl is None:
        try:
            os.unlink(path)  # fails while the writer holds the file open
        except OSError:
            return
        remove()
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        if _try_lock(fd):
            remove()
    finally:
        os.close(fd)


def clean_abandoned(folder: str | os.PathLike) -> None:
    """Remove what saves and captures killed before they finished left in ``folder`` (unlocked temporaries)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for temp in folder.glob(f".*{TEMP_SUFFIX}"):
        _abandoned(temp, lambda temp=temp: temp.unlink(missing_ok=True))
    for partial in folder.glob(f".*{PARTIAL_SUFFIX}"):
        if (partial / LOCK_NAME).is_file():
            _abandoned(partial / LOCK_NAME, lambda partial=partial: shutil.rmtree(partial, ignore_errors=True))
        elif any(partial.iterdir()):  # an earlier capture moved aside to be replaced
            shutil.rmtree(partial, ignore_errors=True)
        # (an empty one is a capture being created this instant, or an empty leftover: nothing large)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows has no directory handles to fsync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_locked(folder: Path, name: str, suffix: str, make: Callable[..., Any]) -> tuple[int, Path]:
    """A new hidden temporary file (``make=tempfile.mkstemp``) or folder (``mkdtemp``, locked through a file in
    it) in ``folder``, and the open descriptor that holds its lock."""
    _writable_folder(folder)
    clean_abandoned(folder)
    while True:
        try:
            made = make(prefix=f".{name}.", suffix=suffix, dir=folder)
            if isinstance(made, tuple):
                fd, temp = made[0], Path(made[1])
                lock_path = temp
            else:
                temp = Path(made)
                lock_path = temp / LOCK_NAME
                fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise HSpaceError(f"cannot write in {folder}: {err.strerror or err}") from None
        _try_lock(fd)
        # another process's clean_abandoned may have taken it in the instant before the lock: then start again
        if os.path.exists(lock_path) and os.path.samestat(os.fstat(fd), os.stat(lock_path)):
            return fd, temp
        os.close(fd)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def content_hash(kind: str, meta: Any, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a file's kind, metadata and tensors (name, dtype, shape, bytes), independent of their order."""
    digest = hashlib.sha256(json.dumps({"format": kind, "meta": meta}, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, kind: str, meta: Any) -> Path:
    """Write an hspace safetensors file: locked hidden temporary, flush + fsync, rename, fsync of the folder."""
    path = Path(path)
    if path.is_dir():
        raise HSpaceError(f"cannot save to {path}: it is a folder")
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    try:
        meta = json.loads(json.dumps(meta))  # what a load will give back (tuples become lists), hashed as such
    except (TypeError, ValueError) as err:
        raise HSpaceError(f"cannot save {path.name}: its metadata must be JSON (numbers, strings, lists, "
                          f"objects): {err}") from None
    record = {"format": kind, "version": FORMAT_VERSION, "meta": meta, "sha256": content_hash(kind, meta, tensors)}
    fd, temp = _new_locked(path.parent, path.name, TEMP_SUFFIX, tempfile.mkstemp)
    try:
        save_file(tensors, temp, metadata={FORMAT_KEY: json.dumps(record, sort_keys=True)})
        os.fsync(fd)  # the same file: save_file reopened the path, and fsync flushes the file, not the handle
        os.chmod(temp, 0o644)  # mkstemp creates 0600; a direction file is meant to be shared
        if fcntl is None:  # Windows renames no file that is open
            os.close(fd)
            fd = -1
        os.replace(temp, path)
    except BaseException as err:
        temp.unlink(missing_ok=True)
        if isinstance(err, (OSError, SafetensorError)):
            raise HSpaceError(f"could not save {path}: {getattr(err, 'strerror', None) or err}") from None
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    _fsync_folder(path.parent)
    return path


# ---------------------------------------------------------------- reading

def _corrupt(path: Path, what: str) -> HSpaceError:
    return HSpaceError(f"{path.name} is not a readable safetensors file (corrupt or truncated?): {what}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors header, checked against the file size before anything is allocated from it."""
    if not path.is_file():
        raise HSpaceError(f"no file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        header_length = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
        if not (head[8:9] == b"{" and 0 < header_length <= size - 8):
            if head[:1] == b"\x80" or head[:2] == b"PK":
                raise HSpaceError(f"{path.name} is a pickle / torch.save file; hspace reads only .safetensors files "
                                  "(pickles can run code when loaded)")
            raise _corrupt(path, f"a header of {header_length} bytes does not fit in a file of {size} bytes")
        if header_length > MAX_HEADER_BYTES:
            raise _corrupt(path, f"a header of {header_length} bytes (at most {MAX_HEADER_BYTES})")
        f.seek(8)
        raw = f.read(header_length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise _corrupt(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")
    data_size, spans = size - 8 - header_length, []
    for name, info in header.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise _corrupt(path, "the metadata is not a map of strings")
            continue
        if not (isinstance(info, dict) and info.get("dtype") in DTYPE_SIZES and isinstance(info.get("shape"), list)
                and all(_is_count(s) for s in info["shape"]) and isinstance(info.get("data_offsets"), list)
                and len(info["data_offsets"]) == 2 and all(_is_count(o) for o in info["data_offsets"])):
            raise _corrupt(path, f"the entry of tensor {name!r} is malformed")
        start, end = info["data_offsets"]
        if not start <= end <= data_size or end - start != math.prod(info["shape"]) * DTYPE_SIZES[info["dtype"]]:
            raise _corrupt(path, f"tensor {name!r} claims shape {info['shape']} {info['dtype']} at bytes "
                                 f"{start}..{end}, which the {data_size} data bytes of the file do not hold")
        spans.append((start, end))
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise _corrupt(path, "the tensors do not tile the data section")
        position = end
    if position != data_size:
        raise _corrupt(path, f"the tensors cover {position} of its {data_size} data bytes")
    return header


def _read_record(path: Path, kind: str) -> tuple[int, Any, str | None]:
    """(format version, metadata, stored checksum) of an hspace file of ``kind``; clear errors otherwise."""
    metadata = _read_header(path).get("__metadata__") or {}
    if FORMAT_KEY in metadata:
        try:
            record = json.loads(metadata[FORMAT_KEY])
        except (ValueError, RecursionError):
            raise HSpaceError(f"{path.name} has corrupt hspace metadata (not JSON)") from None
        if not isinstance(record, dict):
            raise HSpaceError(f"{path.name} has corrupt hspace metadata (not a JSON object)")
        found, version, checksum = record.get("format"), record.get("version"), record.get("sha256")
        if found != kind:
            raise HSpaceError(f"{path.name} is not an hspace {kind} file (found: {found})")
        if not _is_count(version) or version < 2:
            raise HSpaceError(f"{path.name} has an invalid hspace format version {version!r}")
        if version > FORMAT_VERSION:
            raise HSpaceError(f"{path.name} was written by a newer hspace (file format {version}; this one reads "
                              f"formats 1 to {FORMAT_VERSION}): update hspace to load it")
        if not (isinstance(checksum, str) and re.fullmatch(r"[0-9a-f]{64}", checksum)):
            raise HSpaceError(f"{path.name} has corrupt hspace metadata (its checksum is not a sha256)")
        return version, record.get("meta"), checksum
    if V1_FORMAT_KEY in metadata:
        if metadata[V1_FORMAT_KEY] != kind:
            raise HSpaceError(f"{path.name} is not an hspace {kind} file (found: {metadata[V1_FORMAT_KEY]})")
        if metadata.get("hspace_format_version") != "1":
            raise HSpaceError(f"{path.name} has an unknown hspace format version "
                              f"{metadata.get('hspace_format_version')!r} (this hspace reads 1 to {FORMAT_VERSION})")
        try:
            meta = json.loads(metadata.get("meta", "{}"))
        except (ValueError, RecursionError):
            raise HSpaceError(f"{path.name} has corrupt hspace metadata") from None
        return 1, meta, None
    raise HSpaceError(f"{path.name} is not an hspace {kind} file (found: no hspace metadata)")


def _read_tensors(path: Path, expected: set[str]) -> dict[str, torch.Tensor]:
    """The file's tensors, which must be exactly ``expected``, all floating point."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            if names != expected:
                raise HSpaceError(f"{path.name} holds the tensors {sorted(names)}, expected {sorted(expected)}")
            tensors = {name: handle.get_tensor(name) for name in sorted(names)}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise _corrupt(path, str(err)) from None
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise HSpaceError(f"{path.name}: the tensor {name!r} should be floating point, got {tensor.dtype}")
    return tensors


def _verify(path: Path, version: int, kind: str, meta: Any, tensors: dict[str, torch.Tensor],
            checksum: str | None, remedy: str) -> None:
    if version == 1:
        warnings.warn(f"{path.name} was written by an older hspace (file format 1, without a checksum): it loads, "
                      "but corruption cannot be detected in it; save it again to add one", stacklevel=3)
        return
    if content_hash(kind, meta, tensors) != checksum:
        raise HSpaceError(f"{path.name} is corrupt: its content does not match the checksum written when it was "
                          f"saved (changed on disk or damaged in a copy); {remedy}")


def _wrong_type(path: Path, field: str, expected: str, value: Any) -> HSpaceError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return HSpaceError(f"{path.name}: the metadata field {field!r} should be {expected}, got "
                       f"{type(value).__name__} {shown}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value: Any, length: int | None = None) -> bool:
    return isinstance(value, list) and all(_is_number(v) for v in value) and length in (None, len(value))


_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "method": ("a string", lambda v: isinstance(v, str)),
    "units": ("a string", lambda v: isinstance(v, str)),
    "hook_site": ("a string", lambda v: isinstance(v, str)),
    "version": ("a string", lambda v: isinstance(v, str)),
    "default_strength": ("a finite number", _is_number),
    "strength_range": ("a list of two numbers", lambda v: _numbers(v, 2)),
    "edit_window": ("null or a list of two numbers [t_end, t_start]", lambda v: v is None or _numbers(v, 2)),
    "explained_variance_ratio": ("a list of numbers", _numbers),
    "num_samples": ("a whole number", _is_count),
    "component": ("a whole number", _is_count),
    "seeds": ("a list of whole numbers", lambda v: isinstance(v, list) and all(isinstance(s, int) for s in v)),
    "fingerprint": ("null or an object with arch (string), h_shape (list of whole numbers), weights (string)",
                    lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("arch", ""), str)
                                            and isinstance(v.get("weights", ""), str)
                                            and isinstance(v.get("h_shape", []), list)
                                            and all(_is_count(s) for s in v.get("h_shape", [])))),
}


def check_meta(path: Path, meta: Any) -> dict[str, Any]:
    """Refuse metadata whose known fields have the wrong type (a string fingerprint, a spectrum of strings...)."""
    if not isinstance(meta, dict):
        raise _wrong_type(path, "meta", "an object", meta)
    for field, (expected, valid) in _CHECKS.items():
        if field in meta and not valid(meta[field]):
            raise _wrong_type(path, field, expected, meta[field])
    return meta


def _direction(path: Path, delta: torch.Tensor, timesteps: torch.Tensor | None, meta: Any) -> Direction:
    try:
        return Direction(delta, None if timesteps is None else timesteps.tolist(), check_meta(path, meta))
    except HSpaceError as err:
        raise HSpaceError(f"{path.name}: {err}") from None


# ---------------------------------------------------------------- directions

def save_directions(directions: Sequence[Direction], path: str | os.PathLike) -> Path:
    """Save a set of directions as one file, whole or not at all."""
    if not directions:
        raise HSpaceError("an empty direction set came: at least one direction to save expected")
    tensors: dict[str, torch.Tensor] = {}
    for i, direction in enumerate(directions):
        tensors[f"delta.{i}"] = direction.delta
        if direction.per_timestep:
            tensors[f"timesteps.{i}"] = torch.tensor(direction.timesteps, dtype=torch.float64)
    return atomic_save(tensors, path, "direction", [d.meta for d in directions])


def save_direction(direction: Direction, path: str | os.PathLike) -> Path:
    return save_directions([direction], path)


def load_directions(path: str | os.PathLike) -> list[Direction]:
    """Every direction of a direction file (one, or the set it was saved with)."""
    path = Path(path)
    remedy = "save the direction again, or restore the file from a backup"
    version, meta, checksum = _read_record(path, "direction")
    if version == 1:
        names = {"delta"} | ({"timesteps"} & _tensor_names(path))
        tensors = _read_tensors(path, names)
        _verify(path, version, "direction", meta, tensors, checksum, remedy)
        return [_direction(path, tensors["delta"], tensors.get("timesteps"), meta)]
    if not (isinstance(meta, list) and meta):
        raise _wrong_type(path, "meta", "a non-empty list (one entry per direction)", meta)
    names = {f"delta.{i}" for i in range(len(meta))}
    tensors = _read_tensors(path, names | ({f"timesteps.{i}" for i in range(len(meta))} & _tensor_names(path)))
    _verify(path, version, "direction", meta, tensors, checksum, remedy)
    return [_direction(path, tensors[f"delta.{i}"], tensors.get(f"timesteps.{i}"), m) for i, m in enumerate(meta)]


def load_direction(path: str | os.PathLike) -> Direction:
    """The direction of a file that holds one (a file holding a set is refused: use ``load_directions``)."""
    directions = load_directions(path)
    if len(directions) != 1:
        raise HSpaceError(f"{Path(path).name} holds a set of {len(directions)} directions, one expected: "
                          "load_directions reads them all")
    return directions[0]


def load_record(path: str | os.PathLike, kind: str, remedy: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked metadata and the tensors of an hspace file of ``kind`` (checksum verified; ``remedy`` says what
    to do when it fails)."""
    path = Path(path)
    version, meta, checksum = _read_record(path, kind)
    tensors = _read_tensors(path, _tensor_names(path))
    _verify(path, version, kind, meta, tensors, checksum, remedy)
    return check_meta(path, meta), tensors


def _tensor_names(path: Path) -> set[str]:
    return set(_read_header(path)) - {"__metadata__"}


# ---------------------------------------------------------------- trajectories

def save_trajectory(trajectory: Trajectory, path: str | os.PathLike) -> Path:
    tensors = {"h": trajectory.h, "timesteps": trajectory.timesteps, "sigmas": trajectory.sigmas}
    return atomic_save(tensors, path, "trajectory", trajectory.meta)


def _load_trajectory_file(path: Path, remedy: str, verify: bool = True) -> tuple[Trajectory, str | None]:
    version, meta, checksum = _read_record(path, "trajectory")
    tensors = _read_tensors(path, {"h", "timesteps", "sigmas"})
    if verify:
        _verify(path, version, "trajectory", meta, tensors, checksum, remedy)
    try:
        return Trajectory(tensors["h"], tensors["timesteps"], tensors["sigmas"], check_meta(path, meta)), checksum
    except HSpaceError as err:
        raise HSpaceError(f"{path.name}: {err}") from None


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """A trajectory file, or the whole of a capture folder (see :class:`ShardedTrajectory`)."""
    path = Path(path)
    if path.is_dir():
        return ShardedTrajectory(path).load()
    return _load_trajectory_file(path, "save the trajectory again, or restore the file from a backup")[0]


class TrajectoryWriter:
    """Stream a large capture to a folder of safetensors shards (one per appended chunk of samples).

    The shards go to a hidden, locked folder beside ``folder`` that ``close`` renames to ``folder`` once its
    index is written, so a capture stopped before the end (killed, cancelled, failed) is never seen as data; the
    next capture into the same parent folder removes what a killed one left. An earlier capture at ``folder`` is
    replaced as a whole; a folder that holds anything else is refused.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if self.folder.exists() and not _is_capture_folder(self.folder):
            raise HSpaceError(f"{self.folder} exists and is not an hspace capture: capture into a new folder")
        self._lock, self._partial = _new_locked(self.folder.parent, self.folder.name, PARTIAL_SUFFIX, tempfile.mkdtemp)
        self.shards: list[dict[str, Any]] = []
        self.first: Trajectory | None = None

    def append(self, chunk: Trajectory) -> None:
        if self.first is None:
            self.first = chunk
        elif chunk.h.shape[1:] != self.first.h.shape[1:] or not torch.equal(chunk.timesteps, self.first.timesteps):
            raise HSpaceError("every shard of a trajectory must have the same steps and h shape")
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_trajectory(chunk, self._partial / name)
        checksum = json.loads(_read_header(self._partial / name)["__metadata__"][FORMAT_KEY])["sha256"]
        self.shards.append({"file": name, "samples": chunk.num_samples, "sha256": checksum})

    def close(self) -> "ShardedTrajectory":
        if self.first is None:
            self.discard()
            raise HSpaceError("the capture is empty: nothing was appended")
        index = {"hspace_format": INDEX_KIND, "hspace_format_version": FORMAT_VERSION, "shards": self.shards}
        with open(self._partial / INDEX_NAME, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, sort_keys=True, indent=1))
            f.flush()
            os.fsync(f.fileno())
        _fsync_folder(self._partial)
        replaced = None
        if self.folder.exists():  # an earlier capture: moved aside whole (cleaned as abandoned if killed), deleted
            replaced = self.folder.parent / f".{self.folder.name}.{os.urandom(6).hex()}{PARTIAL_SUFFIX}"
            os.replace(self.folder, replaced)
        if fcntl is None:  # Windows renames no folder that holds an open file
            self._release()
        os.replace(self._partial, self.folder)
        (self.folder / LOCK_NAME).unlink(missing_ok=True)
        self._release()
        _fsync_folder(self.folder.parent)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
        return ShardedTrajectory(self.folder)

    def discard(self) -> None:
        """Remove a capture that did not finish (cancelled or failed): nothing is left half-written."""
        shutil.rmtree(self._partial, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _is_capture_folder(folder: Path) -> bool:
    """A folder a capture wrote (or an empty one): only an index and shards."""
    return folder.is_dir() and all(p.name in (INDEX_NAME, LOCK_NAME) or SHARD_PATTERN.fullmatch(p.name)
                                   for p in folder.iterdir())


def is_incomplete_capture(folder: str | os.PathLike) -> bool:
    """Shards without an index: a capture by an older hspace stopped before it finished."""
    folder = Path(folder)
    return (folder.is_dir() and not (folder / INDEX_NAME).is_file()
            and any(SHARD_PATTERN.fullmatch(p.name) for p in folder.iterdir()))


class ShardedTrajectory:
    """A trajectory on disk, read one shard at a time (bounded memory).

    Each shard's checksum is verified the first time this reader reads it; the passes after (randomized PCA reads
    the data several times) skip the hash while the file's inode, size and modification time stay the same.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_path = self.folder / INDEX_NAME
        if is_incomplete_capture(self.folder):
            raise HSpaceError(f"{self.folder} is an incomplete capture (shards without {INDEX_NAME}: it was stopped "
                              "before it finished); capture again, and delete this folder")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise HSpaceError(f"{self.folder} is not a sharded hspace trajectory: {err}") from None
        if not isinstance(index, dict) or index.get("hspace_format") != INDEX_KIND:
            raise HSpaceError(f"{index_path} is not an hspace trajectory index")
        version, entries = index.get("hspace_format_version"), index.get("shards")
        if not (isinstance(entries, list) and entries):
            raise HSpaceError(f"{index_path} lists no shards: a non-empty list expected, got {entries!r:.60}")
        if version is None and all(isinstance(e, str) for e in entries):  # format 1: a list of file names
            version, entries = 1, [{"file": e} for e in entries]
        if version != 1 and not (_is_count(version) and version == FORMAT_VERSION):
            raise HSpaceError(f"{index_path} has the format version {version!r}; this hspace reads 1 to "
                              f"{FORMAT_VERSION} (update hspace if the capture is newer)")
        self.shards, self._expected = [], []
        self._verified: dict[Path, tuple[int, int, int]] = {}
        for entry in entries:
            name = entry.get("file") if isinstance(entry, dict) else None
            if not (isinstance(name, str) and SHARD_PATTERN.fullmatch(name)):
                raise HSpaceError(f"{index_path} lists a shard {name!r}: a file name shard_NNNNN.safetensors inside "
                                  "the folder expected")
            if self.folder / name in self.shards:
                raise HSpaceError(f"{index_path} lists the shard {name} twice")
            if not (self.folder / name).is_file():
                raise HSpaceError(f"{self.folder} lacks the shard {name} its index lists: the capture is incomplete")
            if version == FORMAT_VERSION and not (_is_count(entry.get("samples")) and entry["samples"] > 0
                                                  and isinstance(entry.get("sha256"), str)):
                raise HSpaceError(f"{index_path}: the entry of {name} needs a sample count and a sha256")
            self.shards.append(self.folder / name)
            self._expected.append(entry)
        if version == 1:
            warnings.warn(f"{self.folder.name} was captured by an older hspace (no checksums): it loads, but "
                          "corruption cannot be detected in it", stacklevel=2)

    def iter_chunks(self) -> Iterator[Trajectory]:
        remedy = f"capture again, or restore the folder {self.folder.name} from a backup"
        first = None
        for shard, entry in zip(self.shards, self._expected):
            try:
                stat = shard.stat()
            except OSError:
                raise HSpaceError(f"{shard.name} of {self.folder} is gone; {remedy}") from None
            key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            chunk, checksum = _load_trajectory_file(shard, remedy, verify=self._verified.get(shard) != key)
            self._verified[shard] = key
            if "sha256" in entry and (checksum != entry["sha256"] or chunk.num_samples != entry["samples"]):
                raise HSpaceError(f"{shard.name} in {self.folder.name} is not the shard its index lists (another "
                                  f"capture's, or edited); {remedy}")
            if first is None:
                first = chunk
            elif chunk.h.shape[1:] != first.h.shape[1:] or not torch.equal(chunk.timesteps, first.timesteps):
                raise HSpaceError(f"{shard.name} in {self.folder.name} has other steps or another h shape than the "
                                  f"first shard; {remedy}")
            yield chunk

    def load(self) -> Trajectory:
        return Trajectory.concat(list(self.iter_chunks()))
