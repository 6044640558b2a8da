import os

import pytest
import torch
from safetensors.torch import save_file

from hspace_core import fileio
from hspace_core.direction import Direction, Trajectory
from hspace_core.errors import HSpaceError
from hspace_core.fileio import (TrajectoryWriter, load_direction, load_trajectory, save_direction,
                                save_trajectory)


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


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    for pad in range(300):
        path = save_direction(Direction(torch.ones(1, 1, 1), meta={"note": "x" * pad}), tmp_path / "d.safetensors")
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length whose first byte is 0x80")
    assert load_direction(path).meta["note"] == "x" * pad
