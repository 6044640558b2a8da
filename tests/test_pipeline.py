import json

import pytest
import torch

from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError
from hspace_core.imaging import image_grid
from hspace_core.pipeline import HSpacePipeline
from tiny import tiny_unet


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    tiny_unet().save_pretrained(folder / "unet")
    (folder / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "linear", "beta_start": 1e-4,
                                                              "beta_end": 0.02, "num_train_timesteps": 1000}))
    return HSpacePipeline.from_pretrained(folder)


def test_capture_records_every_step_of_every_seed(pipe):
    traj, images = pipe.capture(seeds=range(5), steps=4, batch_size=2)
    assert traj.h.shape == (5, 4, 16, 4, 4) and images.shape == (5, 3, 8, 8)
    assert traj.meta["seeds"] == [0, 1, 2, 3, 4] and traj.meta["fingerprint"] == pipe.fingerprint
    again, _ = pipe.capture(seeds=[3], steps=4)
    assert torch.allclose(again.h[0], traj.h[3], rtol=1e-4, atol=1e-4)


def test_ddim_inversion_trajectory_is_in_generation_order(pipe):
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    inv = pipe.invert(images, steps=6)
    assert inv.trajectory.timesteps.tolist() == sorted(inv.trajectory.timesteps.tolist(), reverse=True)
    assert inv.trajectory.h.shape[:2] == (2, 5)


def test_edit_friendly_inversion_then_edit(pipe):
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    inv = pipe.invert(images, steps=8, method="edit_friendly")
    same = pipe.edit(inv.x_T, inv.sigmas, eta=inv.eta, noises=inv.noises)
    assert float((same - images).norm() / images.norm()) < 1e-5
    d = Direction(torch.randn(16, 4, 4), meta={"fingerprint": pipe.fingerprint})
    edited = pipe.edit(inv.x_T, inv.sigmas, [(d, 3.0)], t_edit=400, eta=inv.eta, noises=inv.noises)
    assert (edited - images).abs().max() > 1e-3


def test_unknown_grid_and_method_are_refused(pipe):
    with pytest.raises(HSpaceError, match="grid"):
        pipe.sigmas(10, grid="karras")
    with pytest.raises(HSpaceError, match="method"):
        pipe.invert(torch.zeros(1, 3, 8, 8), method="null-text")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(HSpaceError, match="no diffusers UNet"):
        HSpacePipeline.from_pretrained(tmp_path)


def test_image_grid_has_the_labelled_size():
    grid = image_grid(torch.zeros(6, 1, 4, 4), ncols=3, upscale=2, col_labels=["a", "b", "c"], row_labels=["r1", "r2"])
    assert grid.size[1] == 16 + 2 * (8 + 2) + 2
