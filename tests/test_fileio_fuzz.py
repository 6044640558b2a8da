"""Seeded fuzzing of direction, trajectory and capture files: every mutated file either loads exactly the original
content (a mutation that changes nothing that is read) or is refused with the project's error; never a raw exception,
never other content without a word."""
import json
import random
import warnings
from pathlib import Path

import torch

from hspace_core.direction import Direction, Trajectory
from hspace_core.errors import HSpaceError
from hspace_core.fileio import TrajectoryWriter, load_directions, load_trajectory, save_directions, save_trajectory

MUTATIONS_PER_FILE = 120


def originals(folder: Path) -> dict[str, tuple[Path, object]]:
    g = torch.Generator().manual_seed(10)
    directions = [Direction(torch.randn(3, 4, 2, 2, generator=g), [800.0, 400.0, 0.0],
                            {"method": "pca", "explained_variance_ratio": [0.5, 0.25, 0.125],
                             "fingerprint": {"arch": "UNet2DModel", "h_shape": [4, 2, 2], "weights": "0123abcd"}}),
                  Direction(torch.randn(4, 2, 2, generator=g), meta={"method": "supervised"})]
    trajectory = Trajectory(torch.randn(3, 3, 4, 2, 2, generator=g), [800.0, 400.0, 0.0], [4.0, 1.0, 0.1],
                            {"seeds": [0, 1, 2], "cfg": 1.0})
    writer = TrajectoryWriter(folder / "capture")
    writer.append(trajectory.select(slice(0, 2)))
    writer.append(trajectory.select(slice(2, 3)))
    writer.close()
    return {"direction": (save_directions(directions, folder / "d.safetensors"), directions),
            "trajectory": (save_trajectory(trajectory, folder / "t.safetensors"), trajectory),
            "shard": (folder / "capture" / "shard_00001.safetensors", trajectory),
            "index": (folder / "capture" / "index.json", trajectory)}


def same(loaded, original) -> bool:
    if isinstance(original, Trajectory):
        return (torch.equal(loaded.h, original.h) and loaded.h.dtype == original.h.dtype
                and torch.equal(loaded.timesteps, original.timesteps) and torch.equal(loaded.sigmas, original.sigmas)
                and json.dumps(loaded.meta, sort_keys=True) == json.dumps(original.meta, sort_keys=True))
    return len(loaded) == len(original) and all(
        torch.equal(a.delta, b.delta) and a.timesteps == b.timesteps and a.meta == b.meta
        for a, b in zip(loaded, original))


def header_edit(data: bytes, rng: random.Random) -> bytes:
    """Edit one field of the safetensors header and write it back with a consistent length."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    kind = rng.randrange(8)
    if kind == 0:
        entry["dtype"] = rng.choice(["F16", "I32", "F64", "U8", "BF16", "I64", "X9"])
    elif kind == 1:
        entry["shape"] = list(reversed(entry["shape"])) if len(entry["shape"]) > 1 else [entry["shape"][0] + 1]
    elif kind == 2:
        entry["shape"] = [10 ** rng.randrange(6, 13)] * rng.randrange(1, 4)
    elif kind == 3:
        entry["data_offsets"] = [o + rng.choice([-8, -4, 4, 8, 10 ** 9]) for o in entry["data_offsets"]]
    elif kind == 4 and len(names) > 1:
        other = header[rng.choice([n for n in names if n != name])]
        entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
    elif kind == 5:
        header.pop("__metadata__", None)
    elif kind == 6:  # one character of the hspace record (metadata, version, checksum) changed
        record = header["__metadata__"]["hspace"]
        i = rng.randrange(len(record))
        header["__metadata__"]["hspace"] = record[:i] + rng.choice("0123456789abcdef\"{}[],: x") + record[i + 1:]
    else:
        header[name + rng.choice(["", "x"])] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


def mutate(data: bytes, rng: random.Random, is_json: bool) -> bytes:
    kind = rng.randrange(3 if is_json else 6)
    if kind == 0:  # flipped bits anywhere
        out = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 1:  # truncated
        return data[:rng.randrange(len(data))]
    if kind == 2:  # a byte deleted, inserted or replaced
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.randrange(256)]) * rng.randrange(2) + data[i + rng.randrange(2):]
    if kind == 3:  # flipped bits in the tensor data only
        length = int.from_bytes(data[:8], "little")
        out = bytearray(data)
        out[rng.randrange(8 + length, len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 4:  # the header length changed
        length = int.from_bytes(data[:8], "little") + rng.choice([-9, -1, 1, 7, 2 ** 20, 2 ** 40])
        return max(length, 0).to_bytes(8, "little") + data[8:]
    return header_edit(data, rng)


def test_mutated_files_load_the_original_or_are_refused_clearly(tmp_path):
    rng = random.Random(1014)
    files = originals(tmp_path)
    counts = {"identical": 0, "refused": 0, "raw": 0, "silent": 0}
    failures = []
    for kind, (path, original) in files.items():
        pristine = path.read_bytes()
        load = load_directions if kind == "direction" else load_trajectory
        target = path.parent if kind in ("shard", "index") else path
        for trial in range(MUTATIONS_PER_FILE):
            path.write_bytes(mutate(pristine, rng, kind == "index"))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # a format-1 look-alike would load unchecked: count it as raw
                    loaded = load(target)
            except HSpaceError:
                counts["refused"] += 1
                continue
            except Exception as err:  # noqa: BLE001 - what this test looks for
                counts["raw"] += 1
                failures.append(f"{kind} #{trial}: {type(err).__name__}: {err}")
                continue
            if same(loaded, original):
                counts["identical"] += 1
            else:
                counts["silent"] += 1
                failures.append(f"{kind} #{trial}: loaded other content")
        path.write_bytes(pristine)
    print(f"{sum(counts.values())} mutations: {counts}")
    assert counts["raw"] == 0 and counts["silent"] == 0, "\n".join(failures[:10])
    assert counts["refused"] > 0.8 * sum(counts.values())
