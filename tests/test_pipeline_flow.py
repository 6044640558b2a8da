"""HSpacePipeline on a flow-matching transformer (a tiny random DiT): the same calls as on a UNet."""
import pytest
import torch

from hspace_core.direction import Direction
from hspace_core.discovery.pca import pca_directions
from hspace_core.errors import HSpaceError
from hspace_core.pipeline import HSpacePipeline
from hspace_core.samplers import sample_ddim
from hspace_core.transformer_denoisers import DiffusersTransformerDenoiser
from tests.tiny import tiny_dit


@pytest.fixture(scope="module")
def pipe():
    denoiser = DiffusersTransformerDenoiser(tiny_dit(), cond={"class_labels": torch.tensor([10])})
    return HSpacePipeline.for_denoiser(denoiser)


def test_flow_grid_and_noise_level(pipe):
    sigmas = pipe.sigmas(10)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and len(sigmas) == 11
    z = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(pipe.noise([3], sigmas)[0], z)  # x_T = eps at sigma 1, unscaled
    with pytest.raises(HSpaceError, match="grid 'flow' only"):
        pipe.sigmas(10, grid="asyrp")


def test_capture_is_plain_flow_sampling_with_h_per_step(pipe):
    trajectory, images = pipe.capture(range(3), steps=6)
    sigmas = pipe.sigmas(6)
    assert trajectory.h.shape == (3, 6, 16, 16)  # 16 image tokens of width 16, one h per step
    assert torch.equal(images, sample_ddim(pipe.denoiser, pipe.noise(range(3), sigmas), sigmas, disable=True))
    assert pipe.fingerprint["site"] == "transformer_blocks.1.output"


def test_zero_edit_is_bitwise_plain_and_a_pc_edit_changes_the_images(pipe):
    trajectory, images = pipe.capture(range(6), steps=6)
    sigmas = pipe.sigmas(6)
    x_T = pipe.noise(range(6), sigmas)
    pc = pca_directions(trajectory, num_components=1).to_direction(0, trajectory.timesteps)
    assert pc.meta["hook_site"] == "transformer_blocks.1.output"  # from the trajectory's fingerprint
    zero = Direction(torch.zeros_like(pc.delta), pc.timesteps, {"fingerprint": pipe.fingerprint})
    assert torch.equal(pipe.edit(x_T, sigmas, [(zero, 1.0)]), images)
    assert (pipe.edit(x_T, sigmas, [(pc, 3.0)]) - images).abs().max() > 1e-2


def test_inversions_on_the_flow_form(pipe):
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exact = pipe.invert(images.double(), 8, method="edit_friendly")
    pipe.denoiser.model.double()
    try:
        regenerated = pipe.edit(exact.x_T, exact.sigmas, eta=exact.eta, noises=exact.noises)
    finally:
        pipe.denoiser.model.float()
    assert float((regenerated - images).norm() / images.norm()) < 1e-6
    ddim = pipe.invert(images, 8)
    assert ddim.trajectory.h.shape[:2] == (2, 7) and ddim.trajectory.sigmas[0] > ddim.trajectory.sigmas[-1]


def test_pca_of_a_sharded_transformer_capture_keeps_its_site(pipe, tmp_path):
    from hspace_core.fileio import ShardedTrajectory, TrajectoryWriter

    trajectory, _ = pipe.capture(range(4), steps=4)
    writer = TrajectoryWriter(tmp_path / "capture")
    for rows in (slice(0, 2), slice(2, 4)):
        writer.append(trajectory.select(torch.arange(4)[rows]))
    writer.close()
    pca = pca_directions(ShardedTrajectory(tmp_path / "capture"), num_components=1)
    assert pca.to_direction(0, trajectory.timesteps).meta["hook_site"] == "transformer_blocks.1.output"


def test_direction_arithmetic_on_per_timestep_token_directions():
    from hspace_core import arithmetic

    meta = {"hook_site": "transformer_blocks.0.output"}
    generator = torch.Generator().manual_seed(0)
    a = Direction(torch.randn(3, 16, 8, generator=generator), [999.0, 500.0, 0.0], meta)
    b = Direction(torch.randn(3, 16, 8, generator=generator), [999.0, 500.0, 0.0], meta)
    random = arithmetic.random_like(a, 1)
    assert torch.allclose(random.delta.flatten(1).norm(dim=1), a.delta.flatten(1).norm(dim=1))
    unit = arithmetic.normalize(a, per_timestep=True)
    assert torch.allclose(unit.delta.flatten(1).norm(dim=1), torch.ones(3))
    for result in (arithmetic.add(a, b), arithmetic.slerp(a, b, 0.5), arithmetic.project_out(a, [b]),
                   *arithmetic.orthogonalize([a, b])):
        assert result.h_shape == (16, 8) and result.per_timestep
    assert abs(arithmetic.cosine(arithmetic.project_out(a, [b]), b)) < 1e-5


def test_a_t_edit_window_includes_the_first_flow_step_at_sigma_1(pipe):
    """The window [t_edit, T] ends at the flow model's pure-noise timestep 1000, not 999 (a VP model's last)."""
    trajectory, images = pipe.capture(range(2), steps=4)
    sigmas = pipe.sigmas(4)  # t = 1000, 750, 500, 250
    pc = pca_directions(trajectory, num_components=1).to_direction(0, trajectory.timesteps)
    only_first = pipe.edit(pipe.noise(range(2), sigmas), sigmas, [(pc, 3.0)], t_edit=900)
    assert (only_first - images).abs().max() > 1e-3
