import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hspace_core import fileio
from hspace_core.direction import Direction, Trajectory
from hspace_core.errors import HSpaceError
from hspace_core.fileio import (ShardedTrajectory, TrajectoryWriter, clean_abandoned, load_direction,
                                load_directions, load_trajectory, save_direction, save_directions, save_trajectory)


def per_step_direction():
    return Direction(torch.randn(4, 3, 2, 2), [999, 666, 333, 0], {"method": "pca", "default_strength": 2.0})


def test_direction_round_trip(tmp_path):
    for d in (Direction(torch.randn(3, 2, 2), meta={"method": "x"}), per_step_direction()):
        path = save_direction(d, tmp_path / "d.safetensors")
        back = load_direction(path)
        assert torch.equal(back.delta, d.delta) and back.timesteps == d.timesteps and back.meta == d.meta


def test_trajectory_round_trip_and_shards(tmp_path):
    traj = Trajectory(torch.randn(5, 3, 2, 2, 2), [900, 500, 100], [9.0, 5.0, 1.0], {"seeds": [1, 2, 3, 4, 5]})
    back = load_trajectory(save_trajectory(traj, tmp_path / "t.safetensors"))
    assert torch.equal(back.h, traj.h) and back.meta == traj.meta and torch.equal(back.sigmas, traj.sigmas)
    writer = TrajectoryWriter(tmp_path / "shards")
    writer.append(traj.select(slice(0, 2)))
    writer.append(traj.select(slice(2, 5)))
    sharded = writer.close()
    assert [c.num_samples for c in sharded.iter_chunks()] == [2, 3]
    assert torch.equal(load_trajectory(tmp_path / "shards").h, traj.h)


def test_foreign_file_is_refused(tmp_path):
    save_file({"weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(HSpaceError, match="not an hspace direction file"):
        load_direction(tmp_path / "lora.safetensors")
    save_trajectory(Trajectory(torch.zeros(1, 1, 1, 1, 1), [1], [1.0]), tmp_path / "t.safetensors")
    with pytest.raises(HSpaceError, match="not an hspace direction file"):
        load_direction(tmp_path / "t.safetensors")


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    path = save_direction(per_step_direction(), tmp_path / "d.safetensors")
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for name in ("truncated", "garbage"):
        with pytest.raises(HSpaceError, match="corrupt or truncated"):
            load_direction(tmp_path / f"{name}.safetensors")
    with pytest.raises(HSpaceError, match="no file"):
        load_direction(tmp_path / "missing.safetensors")


def test_pickled_file_is_refused(tmp_path):
    torch.save({"delta": torch.zeros(3)}, tmp_path / "d.pt")
    with pytest.raises(HSpaceError, match="pickle"):
        load_direction(tmp_path / "d.pt")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "d.safetensors"
    save_direction(Direction(torch.ones(3, 2, 2)), target)
    before = target.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(fileio, "save_file", broken)
    with pytest.raises(HSpaceError, match="could not save .*disk full"):
        save_direction(per_step_direction(), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["d.safetensors"]


def test_empty_capture_is_refused(tmp_path):
    with pytest.raises(HSpaceError, match="empty"):
        Trajectory(torch.zeros(0, 3, 1, 1, 1), [1, 2, 3], [1, 2, 3])
    with pytest.raises(HSpaceError, match="empty"):
        TrajectoryWriter(tmp_path / "x").close()


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # up to 300 saves; durability is not what this tests
    for pad in range(300):
        path = save_direction(Direction(torch.ones(1, 1, 1), meta={"note": "x" * pad}), tmp_path / "d.safetensors")
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length whose first byte is 0x80")
    assert load_direction(path).meta["note"] == "x" * pad


# -- format 2: determinism, version, checksum, header checks --------------------------------------------------------
def test_the_same_content_saved_twice_gives_the_same_bytes(tmp_path):
    # safetensors orders a metadata map differently from one save to the next, even in one process
    items = [("method", "pca"), ("fingerprint", {"arch": "A", "h_shape": [4, 2, 2], "weights": "ab"}), ("z", 1)]
    saved = set()
    for i in range(6):
        meta = dict(items[i % 3:] + items[:i % 3])
        direction = Direction(torch.arange(16.0).reshape(4, 2, 2) / 7, meta=meta)
        path = save_direction(direction, tmp_path / f"{i}.safetensors")
        saved.add(path.read_bytes())
    assert len(saved) == 1
    traj = Trajectory(torch.randn(3, 2, 2, 2, 2), [900, 100], [9.0, 1.0], {"seeds": [1, 2, 3], "cfg": 1.0})
    first = save_trajectory(traj, tmp_path / "t1.safetensors").read_bytes()
    assert first == save_trajectory(traj, tmp_path / "t2.safetensors").read_bytes()


def test_a_set_is_one_file_and_loads_back_whole(tmp_path):
    items = [per_step_direction(), Direction(torch.randn(3, 2, 2), meta={"method": "g"}), per_step_direction()]
    path = save_directions(items, tmp_path / "set.safetensors")
    back = load_directions(path)
    assert len(back) == 3 and os.listdir(tmp_path) == ["set.safetensors"]
    for a, b in zip(items, back):
        assert torch.equal(a.delta, b.delta) and a.timesteps == b.timesteps and a.meta == b.meta
    with pytest.raises(HSpaceError, match="holds a set of 3 directions"):
        load_direction(path)


def rewrite_record(path, **changes):
    """Re-save a file's tensors with its hspace record changed (a forged or future file)."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        record = json.loads(f.metadata()["hspace"])
    save_file(tensors, path, metadata={"hspace": json.dumps({**record, **changes})})


def test_the_format_version_is_checked(tmp_path):
    path = save_direction(per_step_direction(), tmp_path / "d.safetensors")
    rewrite_record(path, version=3)
    with pytest.raises(HSpaceError, match="newer hspace .*format 3.*update hspace"):
        load_direction(path)
    for bad in ("2", 0, None, 2.5):
        rewrite_record(path, version=bad)
        with pytest.raises(HSpaceError, match="format version"):
            load_direction(path)


def test_a_format_1_file_loads_with_a_warning(tmp_path):
    d = per_step_direction()
    header = {"hspace_format": "direction", "hspace_format_version": "1", "meta": json.dumps(d.meta)}
    save_file({"delta": d.delta, "timesteps": torch.tensor(d.timesteps, dtype=torch.float64)},
              tmp_path / "old.safetensors", metadata=header)
    with pytest.warns(UserWarning, match="older hspace .*without a checksum"):
        back = load_direction(tmp_path / "old.safetensors")
    assert torch.equal(back.delta, d.delta) and back.meta == d.meta
    save_file({"delta": d.delta}, tmp_path / "odd.safetensors", metadata={**header, "hspace_format_version": "7"})
    with pytest.raises(HSpaceError, match="unknown hspace format version '7'"):
        load_direction(tmp_path / "odd.safetensors")


def test_a_changed_bit_or_header_field_fails_the_checksum_with_a_remedy(tmp_path):
    path = save_direction(per_step_direction(), tmp_path / "d.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x04
    path.write_bytes(data)
    with pytest.raises(HSpaceError, match="does not match the checksum .*save the direction again"):
        load_direction(path)
    path = save_direction(per_step_direction(), tmp_path / "d.safetensors")
    path.write_bytes(path.read_bytes().replace(b'\\"default_strength\\": 2.0', b'\\"default_strength\\": 9.0'))
    with pytest.raises(HSpaceError, match="checksum"):
        load_direction(path)


def test_a_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path):
    header = json.dumps({"__metadata__": {"hspace": "{}"},
                         "delta": {"dtype": "F32", "shape": [10 ** 6, 10 ** 6], "data_offsets": [0, 4 * 10 ** 12]}})
    (tmp_path / "huge.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 16)
    with pytest.raises(HSpaceError, match="do not hold"):
        load_direction(tmp_path / "huge.safetensors")
    (tmp_path / "long.safetensors").write_bytes((10 ** 9).to_bytes(8, "little") + b"{}")
    with pytest.raises(HSpaceError, match="does not fit in a file of 10 bytes"):
        load_direction(tmp_path / "long.safetensors")


def test_metadata_of_the_wrong_type_is_refused(tmp_path):
    cases = [({"fingerprint": "abc"}, "fingerprint"), ({"explained_variance_ratio": ["a", "b"]}, "explained_variance"),
             ({"default_strength": "strong"}, "default_strength"), ({"strength_range": [1]}, "strength_range"),
             ({"edit_window": "all"}, "edit_window"), ({"fingerprint": {"h_shape": "4x2x2"}}, "fingerprint")]
    for meta, field in cases:
        fileio.atomic_save({"delta.0": torch.ones(3, 1, 1)}, tmp_path / "d.safetensors", "direction", [meta])
        with pytest.raises(HSpaceError, match=f"metadata field '{field}.*should be"):
            load_direction(tmp_path / "d.safetensors")
    fileio.atomic_save({"delta.0": torch.ones(3, 1, 1)}, tmp_path / "d.safetensors", "direction", {"not": "a list"})
    with pytest.raises(HSpaceError, match="'meta' should be a non-empty list"):
        load_direction(tmp_path / "d.safetensors")
    traj = {"h": torch.ones(1, 1, 1, 1, 1), "timesteps": torch.ones(1, dtype=torch.float64),
            "sigmas": torch.ones(1, dtype=torch.float64)}
    fileio.atomic_save(traj, tmp_path / "t.safetensors", "trajectory", {"seeds": "0-9"})
    with pytest.raises(HSpaceError, match="'seeds' should be a list of whole numbers"):
        load_trajectory(tmp_path / "t.safetensors")
    fileio.atomic_save({**traj, "h": torch.ones(1, 1, 1, 1, 1, dtype=torch.int32)}, tmp_path / "t.safetensors",
                       "trajectory", {})
    with pytest.raises(HSpaceError, match="'h' should be floating point"):
        load_trajectory(tmp_path / "t.safetensors")


def test_saving_where_the_parent_is_a_file_or_unwritable_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HSpaceError, match="is a file, not a folder"):
        save_direction(per_step_direction(), tmp_path / "file" / "sub" / "d.safetensors")
    with pytest.raises(HSpaceError, match="it is a folder"):
        save_direction(per_step_direction(), tmp_path)
    with pytest.raises(HSpaceError, match="metadata must be JSON"):
        save_direction(Direction(torch.ones(3, 1, 1), meta={"x": torch.ones(1)}), tmp_path / "d.safetensors")
    if Path("/proc/self").is_dir():  # a location no one may write to, even root
        with pytest.raises(HSpaceError, match="cannot (create|save|write)"):
            save_direction(per_step_direction(), "/proc/hspace_test/d.safetensors")
    if os.name != "nt" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(HSpaceError, match="not writable"):
            save_direction(per_step_direction(), locked / "d.safetensors")


# -- captures to disk --------------------------------------------------------------------------------------------
def small_trajectory(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Trajectory(torch.randn(n, 3, 2, 2, 2, generator=g), [900, 500, 100], [9.0, 5.0, 1.0],
                      {"seeds": list(range(n))})


def test_a_capture_is_invisible_until_closed_and_a_rerun_leaves_no_stale_shard(tmp_path):
    traj = small_trajectory()
    writer = TrajectoryWriter(tmp_path / "capture")
    writer.append(traj.select(slice(0, 2)))
    assert not (tmp_path / "capture").exists()
    assert [p.name.endswith(".hspace-partial") for p in tmp_path.iterdir()] == [True]
    writer.append(traj.select(slice(2, 4)))
    writer.append(traj.select(slice(4, 5)))
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["capture"]
    rerun = TrajectoryWriter(tmp_path / "capture")
    rerun.append(small_trajectory(2, seed=1))
    rerun.close()
    assert sorted(os.listdir(tmp_path / "capture")) == ["index.json", "shard_00000.safetensors"]
    assert torch.equal(load_trajectory(tmp_path / "capture").h, small_trajectory(2, seed=1).h)
    failed = TrajectoryWriter(tmp_path / "other")
    failed.append(traj)
    failed.discard()
    assert sorted(os.listdir(tmp_path)) == ["capture"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(HSpaceError, match="not an hspace capture"):
        TrajectoryWriter(tmp_path / "mine")


def test_an_index_is_validated_whole(tmp_path):
    writer = TrajectoryWriter(tmp_path / "c")
    for part in (slice(0, 2), slice(2, 5)):
        writer.append(small_trajectory().select(part))
    writer.close()
    index_path = tmp_path / "c" / "index.json"
    good = json.loads(index_path.read_text())
    first, second = good["shards"]
    cases = [([first, first], "twice"), ([{**first, "file": "."}], "shard '.'"),
             ([{**first, "file": str(tmp_path / "c" / first["file"])}], "file name shard_NNNNN"),
             ([{**first, "file": "../c/" + first["file"]}], "file name shard_NNNNN"),
             ([{**first, "file": "shard_00007.safetensors"}], "lacks the shard"), ([], "lists no shards"),
             ([{**first, "sha256": second["sha256"]}], "not the shard its index lists"),
             ([{**first, "samples": 3}], "not the shard its index lists"), ([{"file": first["file"]}], "sample count")]
    for shards, message in cases:
        index_path.write_text(json.dumps({**good, "shards": shards}))
        with pytest.raises(HSpaceError, match=message):
            load_trajectory(tmp_path / "c")
    for index, message in (([1, 2], "not an hspace trajectory index"), ("{", "not a sharded hspace trajectory"),
                           ({**good, "hspace_format_version": 9}, "format version 9")):
        index_path.write_text(index if isinstance(index, str) else json.dumps(index))
        with pytest.raises(HSpaceError, match=message):
            ShardedTrajectory(tmp_path / "c")
    index_path.unlink()
    with pytest.raises(HSpaceError, match="incomplete capture"):
        ShardedTrajectory(tmp_path / "c")


def test_abandoned_temporaries_are_cleaned_and_live_ones_kept(tmp_path):
    writer = TrajectoryWriter(tmp_path / "live")
    writer.append(small_trajectory())
    (tmp_path / ".d.safetensors.x1.hspace-tmp").write_bytes(b"x" * 1000)  # a killed save: no one holds its lock
    dead = tmp_path / ".old_.y.hspace-partial"
    dead.mkdir()
    (dead / ".lock").write_text("")
    (dead / "shard_00000.safetensors").write_bytes(b"x" * 1000)
    clean_abandoned(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [writer._partial.name]
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["live"]


def test_load_trajectory_lists_no_temporaries_or_orphan_shards(tmp_path, monkeypatch):
    import types

    from nodes import _comfy, trajectories

    out, inp = tmp_path / "output", tmp_path / "input"
    fake = types.SimpleNamespace(get_output_directory=lambda: str(out), get_input_directory=lambda: str(inp))
    monkeypatch.setattr(_comfy, "optional", lambda name: fake)
    base = out / trajectories.SUBFOLDER
    save_trajectory(small_trajectory(), base / "capture_00001_.safetensors")
    writer = TrajectoryWriter(base / "capture_00002_")
    writer.append(small_trajectory())
    writer.close()
    orphan = TrajectoryWriter(base / "capture_00003_")  # still running (or killed): hidden
    orphan.append(small_trajectory())
    (base / "capture_00004_").mkdir()  # what an older hspace left when killed: shards without an index
    save_trajectory(small_trajectory(), base / "capture_00004_" / "shard_00000.safetensors")
    (base / ".capture_00005_.safetensors.z.hspace-tmp").write_bytes(b"x")
    assert trajectories.listed_files() == ["hspace_trajectories/capture_00001_.safetensors [output]",
                                           "hspace_trajectories/capture_00002_ [output]"]
    orphan.discard()


def test_a_shard_is_hashed_on_its_first_read_and_again_only_once_changed(tmp_path, monkeypatch):
    writer = TrajectoryWriter(tmp_path / "c")
    writer.append(small_trajectory().select(slice(0, 2)))
    writer.append(small_trajectory().select(slice(2, 5)))
    sharded = writer.close()
    hashed = []
    original = fileio.content_hash
    monkeypatch.setattr(fileio, "content_hash", lambda *a: hashed.append(1) or original(*a))
    for _ in range(3):
        assert sum(c.num_samples for c in sharded.iter_chunks()) == 5
    assert len(hashed) == 2
    shard = sharded.shards[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(data)
    with pytest.raises(HSpaceError, match="shard_00001.safetensors is corrupt.*capture again"):
        list(sharded.iter_chunks())
