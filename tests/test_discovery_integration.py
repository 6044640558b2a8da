"""Discovery end to end on a tiny random UNet: capture -> discover -> Direction -> edited sampling."""
import torch

from hspace_core.direction import Direction
from hspace_core.fileio import TrajectoryWriter
from hspace_core.discovery.asyrp import DeltaBlock, global_delta_h
from hspace_core.discovery.jacobian import trajectory_jacobian_directions
from hspace_core.discovery.pca import pca_directions
from hspace_core.discovery.supervised import disentangle, supervised_direction
from hspace_core.pipeline import HSpacePipeline
from hspace_core.samplers import sample_ddim
from hspace_core.schedule import VPSchedule
from tests.tiny import tiny_unet

torch.set_num_threads(1)


def _pipeline():
    return HSpacePipeline(tiny_unet(), VPSchedule.linear())


def test_pca_of_a_capture_streamed_equals_in_memory_and_edits_samples():
    pipe = _pipeline()
    trajectory, images = pipe.capture(range(10), steps=4)
    chunks = [trajectory.select(slice(i, i + 3)) for i in range(0, 10, 3)]
    streamed = pca_directions(chunks, num_components=3, method="randomized", tol=1e-10, max_iter=300)
    in_memory = pca_directions(trajectory, num_components=3)
    torch.testing.assert_close(streamed.stds, in_memory.stds, rtol=1e-5, atol=0)
    direction = in_memory.to_direction(0, trajectory.timesteps, meta={"fingerprint": pipe.fingerprint})
    sigmas = pipe.sigmas(4)
    x_T = pipe.noise([0], sigmas)
    plain = pipe.edit(x_T, sigmas)
    edited = pipe.edit(x_T, sigmas, [(direction, 3.0)])
    torch.testing.assert_close(plain, images[:1], atol=1e-3, rtol=0)  # batch of 1 vs 10: float32 round-off
    assert (edited - plain).abs().max() > 1e-3


def test_pca_streams_a_sharded_trajectory_from_disk(tmp_path):
    pipe = _pipeline()
    trajectory, _ = pipe.capture(range(9), steps=3)
    writer = TrajectoryWriter(tmp_path / "capture")
    for start in range(0, 9, 4):
        writer.append(trajectory.select(slice(start, start + 4)))
    sharded = writer.close()
    streamed = pca_directions(sharded, num_components=2, method="randomized", tol=1e-10, max_iter=300)
    torch.testing.assert_close(streamed.stds, pca_directions(trajectory, num_components=2).stds, rtol=1e-5, atol=0)


def test_supervised_and_disentangled_directions_from_a_capture():
    pipe = _pipeline()
    trajectory, images = pipe.capture(range(12), steps=3)
    brightness = images.mean(dim=(1, 2, 3))
    n = supervised_direction(trajectory.h, brightness, k=3)
    assert n.shape == trajectory.h.shape[1:]
    condition = supervised_direction(trajectory.h, images[:, 0].mean(dim=(1, 2)), k=3)
    cleaned = disentangle(n, [condition])
    assert abs(float((cleaned.double() * condition.double()).sum())) < 1e-4 * float(n.norm() * condition.norm())
    Direction(cleaned, trajectory.timesteps.tolist()).check_model(pipe.fingerprint)


def test_jacobian_directions_along_a_sampling_run_edit_the_sample():
    pipe = _pipeline()
    pipe.denoiser.unet.requires_grad_(False)
    sigmas = pipe.sigmas(3)
    xs = []
    x_T = pipe.noise([1], sigmas)
    sample_ddim(pipe.denoiser, x_T, sigmas, callback=lambda info: xs.append(info["x"][0]), disable=True)
    result = trajectory_jacobian_directions(pipe.denoiser, torch.stack(xs), sigmas[:-1], num_vectors=2,
                                            tol=1e-4, max_iter=200)
    timesteps = pipe.schedule.timestep(sigmas[:-1]).tolist()
    direction = Direction(result.broadcast(0, 0), timesteps)
    plain = pipe.edit(x_T, sigmas)
    edited = pipe.edit(x_T, sigmas, [(direction, 5.0)], mode="symmetric")
    assert (edited - plain).abs().max() > 1e-3


def test_asyrp_global_direction_applies_in_the_edit_window(monkeypatch):
    """h is shifted on exactly the grid steps with t >= t_edit (the direction's own window, by default), on none
    after them, and the edit changes the image; a t_edit given to the edit overrides the direction's."""
    from hspace_core import pipeline as pipeline_module

    calls = []

    class RecordingBottleneck(pipeline_module.Bottleneck):
        def __call__(self, h, timestep, *args, **kwargs):
            out = super().__call__(h, timestep, *args, **kwargs)
            calls.append((round(float(timestep)), not torch.equal(out, h)))
            return out

    monkeypatch.setattr(pipeline_module, "Bottleneck", RecordingBottleneck)
    pipe = _pipeline()
    block = DeltaBlock.for_unet(pipe.denoiser.unet)
    sigmas = pipe.sigmas(8)
    x_T = pipe.noise([0, 1], sigmas)
    sigma_edit = float(sigmas[3])
    direction = global_delta_h(pipe.denoiser, block, x_T, sigmas, sigma_edit)
    t_edit = round(float(pipe.schedule.timestep(torch.tensor(sigma_edit))))
    grid = [round(float(t)) for t in pipe.schedule.timestep(sigmas[:-1])]
    plain = pipe.edit(x_T[:1], sigmas)
    calls.clear()
    edited = pipe.edit(x_T[:1], sigmas, [(direction, 1.0)])
    assert sorted({t for t, moved in calls if moved}, reverse=True) == [t for t in grid if t >= t_edit] == grid[:4]
    assert not any(moved for t, moved in calls if t < t_edit)
    assert direction.delta.shape == (16, 4, 4) and (edited - plain).abs().max() > 1e-4
    calls.clear()
    pipe.edit(x_T[:1], sigmas, [(direction, 1.0)], t_edit=float(grid[5]))
    assert sorted({t for t, moved in calls if moved}, reverse=True) == grid[:6]
