"""The class-keeping edit (issue 13): the half-space projection, the wrapped asymmetric step against the engine's,
and its refusals."""
import pytest
import torch
from tiny import tiny_unet

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.class_keeping import ClassKeepingModel, keep_non_decreasing
from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError
from hspace_core.pipeline import HSpacePipeline
from hspace_core.samplers import with_hspace_flags
from hspace_core.schedule import VPSchedule


def test_projection_keeps_the_gradient_component_non_negative_and_touches_only_lowering_shifts():
    g = torch.Generator().manual_seed(0)
    delta, gradient = torch.randn(64, 3, 2, 2, generator=g), torch.randn(64, 3, 2, 2, generator=g)
    gradient[0] = 0
    kept = keep_non_decreasing(delta, gradient)
    dot = (delta * gradient).flatten(1).sum(1)
    new_dot = (kept * gradient).flatten(1).sum(1)
    raising = dot >= 0
    assert 0 < int(raising.sum()) < 64
    assert torch.equal(kept[raising], delta[raising])  # a shift that does not lower log p is left as it is
    assert new_dot[~raising].abs().max() < 1e-5 * gradient.flatten(1).norm(dim=1).max() * delta.flatten(1).norm(dim=1).max()
    removed = (delta - kept)[~raising].flatten(1)
    along = gradient[~raising].flatten(1)
    cosine = (removed * along).sum(1) / (removed.norm(dim=1) * along.norm(dim=1))
    assert torch.allclose(cosine.abs(), torch.ones_like(cosine), atol=1e-5)  # only the component along g is removed
    assert torch.allclose(keep_non_decreasing(kept, gradient), kept, atol=1e-6)  # a projection: idempotent
    with pytest.raises(HSpaceError, match="one gradient per shift"):
        keep_non_decreasing(delta, gradient[:3])


class ConstantLogits(torch.nn.Module):
    """Logits that do not depend on the image: the gradient is zero, so nothing is corrected."""

    def forward(self, images):
        return torch.zeros(images.shape[0], 3) + 0 * images.sum()


class LinearClassifier(torch.nn.Module):
    def __init__(self, pixels: int):
        super().__init__()
        torch.manual_seed(3)
        self.head = torch.nn.Linear(pixels, 3)

    def forward(self, images):
        return self.head(images.flatten(1))


@pytest.fixture(scope="module")
def pipe():
    return HSpacePipeline(tiny_unet(channels=1, size=8), VPSchedule.linear())


def direction_for(pipe, scale=3.0, **meta):
    h_shape = pipe.denoiser.h_shape()
    delta = scale * torch.randn(*h_shape, generator=torch.Generator().manual_seed(1))
    return Direction(delta, meta={"fingerprint": pipe.fingerprint, **meta})


@pytest.mark.parametrize("t_edit", [None, 500.0])
def test_without_a_gradient_the_class_keeping_edit_is_the_engines_asymmetric_edit(pipe, t_edit):
    sigmas = pipe.sigmas(6)
    x_T = pipe.noise(range(4), sigmas)
    edits = [(direction_for(pipe), 1.0)]
    engine = pipe.edit(x_T, sigmas, edits, t_edit=t_edit)
    kept = pipe.edit(x_T, sigmas, edits, t_edit=t_edit, keep_class=ConstantLogits(), labels=[0, 1, 2, 0])
    assert (engine - pipe.edit(x_T, sigmas)).abs().max() > 1e-2  # the edit does something
    assert torch.allclose(kept, engine, atol=1e-5)
    zero = pipe.edit(x_T, sigmas, [(direction_for(pipe, 0.0), 1.0)], keep_class=LinearClassifier(64), labels=[0] * 4)
    assert torch.equal(zero, pipe.edit(x_T, sigmas))  # nothing to shift: plain sampling bit for bit


def test_one_step_does_not_lower_the_class_probability_where_the_plain_shift_does(pipe):
    classifier = LinearClassifier(64)
    denoiser = pipe.denoiser
    sigma = float(pipe.sigmas(6)[2])
    x = pipe.noise(range(8), pipe.sigmas(6)) * 0.3
    labels = torch.arange(8) % 3
    edits = [EditSpec(direction_for(pipe, 0.5), 1.0)]
    flags = with_hspace_flags({}, split=True, steps=6, asymmetric=True)
    with torch.no_grad():
        plain_x0, kept_x0 = ClassKeepingModel(denoiser, Bottleneck(edits), classifier, labels)(
            torch.cat([x, x]), torch.tensor([sigma] * 16), **flags).chunk(2)
        with denoiser.attached(Bottleneck(edits)):
            _, edited_x0 = denoiser(torch.cat([x, x]), torch.tensor([sigma] * 16), **flags).chunk(2)

    def log_p(images):
        return classifier(images).log_softmax(1).gather(1, labels.view(-1, 1)).flatten()

    lowered = log_p(edited_x0) < log_p(plain_x0) - 1e-4
    assert 0 < int(lowered.sum()) < 8
    assert torch.all(log_p(kept_x0)[lowered] > log_p(edited_x0)[lowered])  # the correction gives back probability
    assert torch.allclose(kept_x0[~lowered], edited_x0[~lowered], atol=1e-4)  # raising shifts are not touched


def test_class_keeping_bad_input(pipe):
    sigmas = pipe.sigmas(3)
    x_T = pipe.noise(range(2), sigmas)
    edits = [(direction_for(pipe), 1.0)]
    cases = [
        (dict(labels=[0.5, 1.0]), "integer class labels"),
        (dict(labels=[0, 1, 2]), "one class label per sample"),
        (dict(labels=[0, -1]), r"class labels in \[0"),
        (dict(labels=[0, 7]), "class label 7 but the classifier has 3 classes"),
        (dict(labels=[0, 1], mode="symmetric"), "asymmetric process only"),
    ]
    for kwargs, message in cases:
        with pytest.raises(HSpaceError, match=message):
            pipe.edit(x_T, sigmas, edits, keep_class=LinearClassifier(64), **kwargs)
    with pytest.raises(HSpaceError, match=r"logits \[2, classes\]"):
        pipe.edit(x_T, sigmas, edits, keep_class=lambda images: images.sum((1, 2, 3)), labels=[0, 1])
    guided = DiffusersDenoiser(pipe.denoiser.unet, pipe.schedule)
    guided.cfg_scale = 2.0
    with pytest.raises(HSpaceError, match="without classifier-free guidance"):
        ClassKeepingModel(guided, Bottleneck(), LinearClassifier(64), torch.zeros(2, dtype=torch.long))
