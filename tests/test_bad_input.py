"""Every bad input of the catalogue (tests/bad_inputs.py) is refused with the project's error, in one line that
names the problem; and the good inputs next to them still pass."""
from __future__ import annotations

import math

import pytest
import torch

import bad_inputs
from hspace_core import arithmetic
from hspace_core.checks import check_batch, check_number, check_unet_folder
from hspace_core.demo import DemoConfig, run_demo
from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError


@pytest.mark.parametrize("call,pattern", [case[1:] for case in bad_inputs.CASES], ids=[c[0] for c in bad_inputs.CASES])
def test_bad_input_is_refused_clearly(call, pattern):
    with pytest.raises(HSpaceError, match=pattern) as refused:
        call()
    assert "\n" not in str(refused.value)


def test_the_catalogue_is_large_and_spans_library_nodes_and_cli():
    assert len(bad_inputs.CASES) >= 60
    assert min(len(bad_inputs.LIBRARY), len(bad_inputs.NODES), len(bad_inputs.CLI)) >= 10
    assert len({name for name, _, _ in bad_inputs.CASES}) == len(bad_inputs.CASES)


def test_the_good_neighbours_of_the_bad_inputs_pass():
    pipe = bad_inputs.pipe()
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    assert check_batch(images, "images", 1, (8, 8), (-1.0, 1.0)) is images
    assert check_number(1, "eta", 0.0, 1.0) == 1 and check_number(torch.tensor(3), "k", 1, integer=True) == 3
    assert pipe.edit(pipe.noise([0], pipe.sigmas(2)), pipe.sigmas(2), eta=1.0, seed=0).shape == (1, 1, 8, 8)
    assert check_unet_folder(bad_inputs.model_folders()["good"] / "unet")["_class_name"] == "UNet2DModel"
    assert bad_inputs.from_pretrained("good").image_shape == (1, 8, 8)


def test_projection_residuals_are_exactly_zero_only_when_nothing_is_left():
    a = bad_inputs.direction(timesteps=True)
    assert torch.count_nonzero(arithmetic.project_out(a, [arithmetic.scale(a, 3.0)]).delta) == 0
    almost = a.with_delta(a.delta + 1e-3 * torch.randn_like(a.delta))
    kept = arithmetic.project_out(almost, [a])
    assert 0 < arithmetic.norm(kept) and abs(arithmetic.cosine(kept, a)) < 1e-4
    assert arithmetic.norm(arithmetic.normalize(kept)) == pytest.approx(1.0, rel=1e-5)


def test_slerp_of_nearly_opposite_directions_is_still_defined():
    a = Direction(torch.tensor([[[1.0]], [[0.0]]]))
    b = Direction(torch.tensor([[[-1.0]], [[1e-3]]]))
    mid = arithmetic.slerp(a, b, 0.5)
    assert math.isfinite(arithmetic.norm(mid)) and arithmetic.norm(mid) == pytest.approx(1.0, rel=1e-3)


def test_a_demo_that_fails_after_it_started_leaves_no_report_folder(tmp_path, monkeypatch):
    folder = bad_inputs.model_folders()["good"]

    def broken(*args, **kwargs):
        raise HSpaceError("stop here")

    monkeypatch.setattr("hspace_core.demo.pca_directions", broken)
    out = tmp_path / "report"
    with pytest.raises(HSpaceError, match="stop here"):
        run_demo(DemoConfig(samples=5, steps=2, out=out, model=folder), log=lambda _: None)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(HSpaceError, match="stop here"):
        run_demo(DemoConfig(samples=5, steps=2, out=out, model=folder), log=lambda _: None)
    assert out.is_dir()  # a folder the user made is left alone
