import pytest
import torch

from hspace_core import arithmetic as A
from hspace_core.direction import Direction, model_fingerprint
from hspace_core.errors import HSpaceError
from tiny import tiny_denoiser, tiny_unet


def rand(*shape, keys=None):
    return Direction(torch.randn(*shape), keys)


def test_add_subtract_scale_and_broadcast():
    a, b = rand(3, 2, 2), rand(3, 2, 2)
    assert torch.allclose(A.add(a, b).delta, a.delta + b.delta)
    assert torch.allclose(A.subtract(a, b).delta, a.delta - b.delta)
    assert torch.allclose(A.scale(a, -2).delta, -2 * a.delta)
    per = rand(4, 3, 2, 2, keys=[900, 600, 300, 0])
    both = A.add(per, a)
    assert both.timesteps == per.timesteps and torch.allclose(both.delta, per.delta + a.delta)
    with pytest.raises(HSpaceError, match="different h shapes"):
        A.add(a, rand(4, 2, 2))


def test_normalize_and_cosine():
    a = rand(4, 3, 2, 2, keys=[4, 3, 2, 1])
    assert A.norm(A.normalize(a)) == pytest.approx(1.0, rel=1e-6)
    per = A.normalize(a, per_timestep=True)
    assert torch.allclose(per.delta.flatten(1).norm(dim=1), torch.ones(4))
    assert A.cosine(a, A.scale(a, 3)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(HSpaceError, match="zero"):
        A.normalize(Direction(torch.zeros(1, 1, 1)))


def test_joint_projection_is_exact_and_idempotent_and_beats_sequential():
    n = rand(6, 2, 2)
    c1 = rand(6, 2, 2)
    c2 = Direction(c1.delta + 0.3 * torch.randn(6, 2, 2))  # strongly correlated with c1
    joint = A.project_out(n, [c1, c2])
    for c in (c1, c2):
        assert abs(float((joint.delta.double() * c.delta.double()).sum())) < 1e-5 * A.norm(n) * A.norm(c)
    again = A.project_out(joint, [c1, c2])
    assert torch.allclose(again.delta, joint.delta, atol=1e-6)
    sequential = n
    for c in (c1, c2):
        unit = c.delta / c.delta.norm()
        sequential = sequential.with_delta(sequential.delta - (sequential.delta * unit).sum() * unit)
    residual = abs(float((sequential.delta * c1.delta).sum())) / (A.norm(sequential) * A.norm(c1))
    assert residual > 1e-3
    orthogonal = Direction(torch.tensor([[[1.0]], [[0.0]]]))
    assert torch.equal(A.project_out(orthogonal, [Direction(torch.tensor([[[0.0]], [[2.0]]]))]).delta, orthogonal.delta)


def test_orthogonalize_and_slerp():
    dirs = [rand(5, 1, 1) for _ in range(3)]
    ortho = A.orthogonalize(dirs)
    for i in range(3):
        for j in range(i):
            assert abs(float((ortho[i].delta * ortho[j].delta).sum())) < 1e-5
    a, b = rand(3, 2, 2), rand(3, 2, 2)
    assert torch.allclose(A.slerp(a, b, 0.0).delta, a.delta, atol=1e-6)
    assert torch.allclose(A.slerp(a, b, 1.0).delta, b.delta, atol=1e-6)
    mid = A.slerp(A.normalize(a), A.normalize(b), 0.5)
    assert A.norm(mid) == pytest.approx(1.0, rel=1e-5)
    assert A.cosine(mid, a) == pytest.approx(A.cosine(mid, b), rel=1e-5)


def test_direction_for_another_model_is_refused_unless_allowed():
    model = tiny_denoiser(seed=0)
    other = tiny_denoiser(seed=1)
    d = Direction(torch.randn(model.h_shape()), meta={"fingerprint": model.fingerprint()})
    d.check_model(model.fingerprint())
    with pytest.raises(HSpaceError, match="weights"):
        d.check_model(other.fingerprint())
    d.check_model(other.fingerprint(), allow_foreign=True)
    wrong = Direction(torch.randn(7, 4, 4))
    with pytest.raises(HSpaceError, match="h shape"):
        wrong.check_model(model.fingerprint(), allow_foreign=True)


def test_fingerprint_is_stable_and_tells_models_apart():
    a = model_fingerprint(tiny_unet(0), "UNet2DModel", (16, 4, 4))
    assert a == model_fingerprint(tiny_unet(0), "UNet2DModel", (16, 4, 4))
    assert a["weights"] != model_fingerprint(tiny_unet(1), "UNet2DModel", (16, 4, 4))["weights"]
