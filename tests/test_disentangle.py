"""Disentangled attribute directions and their evaluation, on synthetic data where the right answer is known."""
import json

import pytest
import torch

from hspace_core.direction import Direction
from hspace_core.discovery.attribute import (attribute_direction, noise_residual_scores, noise_statistics,
                                               stratified_mean_difference)
from hspace_core.discovery.supervised import supervised_direction
from hspace_core.errors import HSpaceError
from hspace_core.evaluation import (ATTRIBUTES, aspect, class_keeping_direction, evaluate_direction,
                                    horizontal_centre, slant, thickness, vertical_centre)

N, CLASSES, DIM = 1200, 5, 48


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.fixture(scope="module")
def world():
    """h = class part + attribute part + noise-leak part + noise. The score sees the attribute, a class offset
    (so top-K picks some classes) and the starting noise's brightness z (as ink does on generated samples)."""
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(N) % CLASSES
    class_vectors = 3 * torch.randn(CLASSES, DIM, generator=g)
    u, v = torch.randn(DIM, generator=g), torch.randn(DIM, generator=g)
    attribute = torch.randn(N, generator=g)
    z = torch.randn(N, generator=g)
    x_T = torch.randn(N, 1, 8, 8, generator=g) + z.view(-1, 1, 1, 1)
    h = class_vectors[classes] + attribute[:, None] * u + z[:, None] * v + 0.3 * torch.randn(N, DIM, generator=g)
    class_offset = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])[classes]
    scores = attribute + class_offset + 1.5 * z
    return h.view(N, DIM, 1, 1), scores, classes, x_T, u.view(DIM, 1, 1), class_vectors


def test_stratified_and_noise_corrected_direction_recovers_the_attribute_part_and_raw_does_not(world):
    h, scores, classes, x_T, u, _ = world
    raw = supervised_direction(h, scores, N // 8)
    corrected = attribute_direction(h, scores, groups=classes, x_T=x_T)
    stratified_only = attribute_direction(h, scores, groups=classes)
    residual_only = attribute_direction(h, scores, x_T=x_T)
    assert cosine(corrected, u) > 0.97
    assert cosine(raw, u) < 0.6
    assert cosine(stratified_only, u) < 0.85 and cosine(residual_only, u) < 0.85  # each fixes one confound


def test_noise_residual_is_uncorrelated_with_the_noise_and_keeps_the_rest(world):
    _, scores, _, x_T, _, _ = world
    residual = noise_residual_scores(scores, x_T)
    brightness = x_T.mean((1, 2, 3)).double()
    assert abs(float(torch.corrcoef(torch.stack([residual, brightness]))[0, 1])) < 1e-6
    assert float(torch.corrcoef(torch.stack([scores.double(), brightness]))[0, 1]) > 0.6
    assert noise_statistics(x_T, grid=4).shape == (N, 16)


def test_nuisance_directions_are_projected_out(world):
    h, scores, classes, x_T, _, class_vectors = world
    nuisance = [(class_vectors[1] - class_vectors[0]).view(DIM, 1, 1)]
    direction = attribute_direction(h, scores, groups=classes, x_T=x_T, nuisance=nuisance)
    assert abs(cosine(direction, nuisance[0])) < 1e-6


def test_groups_too_small_are_skipped():
    h = torch.randn(30, 4, 1, 1)
    scores = torch.randn(30)
    groups = torch.tensor([0] * 20 + [1] * 10)
    skipped = stratified_mean_difference(h, scores, groups, min_group=11)
    only_first = stratified_mean_difference(h[:20], scores[:20], groups[:20], min_group=11)
    assert torch.equal(skipped, only_first)


@pytest.mark.parametrize("call,message", [
    (lambda h, s, g, x: stratified_mean_difference(h, s[:-1], g), "one score per sample"),
    (lambda h, s, g, x: stratified_mean_difference(h, s, g[:-1]), "one group label per sample"),
    (lambda h, s, g, x: stratified_mean_difference(h, s.clone().fill_(float("nan")), g), "NaN"),
    (lambda h, s, g, x: stratified_mean_difference(h, s, g, min_group=100), "group sizes [10, 10]"),
    (lambda h, s, g, x: stratified_mean_difference(h[:0], s[:0], g[:0]), "at least one sample"),
    (lambda h, s, g, x: stratified_mean_difference(h, s, g, fraction=0.7), "fraction"),
    (lambda h, s, g, x: noise_residual_scores(s, x[:, :, :2, :2], grid=4), "grid"),
    (lambda h, s, g, x: noise_residual_scores(s, x, grid=8), "more samples than noise statistics"),
    (lambda h, s, g, x: attribute_direction(h, s, x_T=x[:5]), "one x_T per sample"),
])
def test_bad_input_is_one_clear_error(call, message):
    h, s, g = torch.randn(20, 3, 1, 1), torch.randn(20), torch.tensor([0, 1] * 10)
    x = torch.randn(20, 1, 8, 8)
    with pytest.raises(HSpaceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(h, s, g, x)


def blank(n=1, size=16):
    return -torch.ones(n, 1, size, size)


def test_attribute_measures_read_what_they_say():
    bar = blank(3)
    bar[0, 0, 3:13, 7] = 1  # a 1-pixel upright stroke
    bar[1, 0, 3:13, 7:9] = 1  # 2 pixels thick
    for row in range(3, 13):  # leaning right going up: '/'
        bar[2, 0, row, 12 - (row - 3) // 2] = 1
    widths = thickness(bar)
    assert widths[0] == pytest.approx(10 / 11) and widths[1] == pytest.approx(20 / 12)
    assert float(thickness(torch.ones(1, 1, 16, 16))) == 16  # all ink, no outline: capped at the image side
    assert abs(float(slant(bar)[0])) < 1e-9 and float(slant(bar)[2]) > 0.4
    assert float(horizontal_centre(bar)[0]) == pytest.approx(7 / 16)
    assert float(vertical_centre(bar)[0]) == pytest.approx(7.5 / 16)
    assert float(aspect(bar)[1]) < float(aspect(bar)[2])
    assert set(ATTRIBUTES) >= {"slant", "thickness", "vertical_centre", "horizontal_centre", "aspect"}


class ShiftPipe:
    """Stands in for HSpacePipeline: an edit brightens its rows by strength · mean(direction)."""

    def __init__(self):
        self.keep_calls = []

    def edit(self, x_T, sigmas, edits=(), t_edit=None, allow_foreign=False, keep_class=None, labels=None):
        images = x_T.clone()
        weakened = 0.5 if keep_class is not None else 1.0  # a class-keeping edit here moves half as far
        for edit in edits:
            images[edit.samples] += weakened * edit.strength * float(edit.direction.delta.mean())
        if keep_class is not None:
            self.keep_calls.append(labels)
        return images


class BrightnessClassifier:
    def predict(self, images):
        labels = (images.mean((1, 2, 3)) > 0.3).long()
        return labels, torch.ones(len(images))


def test_evaluation_reports_share_ratio_linearity_and_class_on_a_known_edit():
    g = torch.Generator().manual_seed(1)
    x_T = 0.1 * torch.randn(40, 1, 4, 4, generator=g)
    measures = {"brightness": lambda im: im.mean((1, 2, 3)), "corner": lambda im: im[:, 0, 0, 0]}
    direction = Direction(torch.full((2, 2, 2), 0.01) + 0.001 * torch.randn(2, 2, 2, generator=g))
    result = evaluate_direction(ShiftPipe(), direction, x_T, torch.ones(3), "brightness", measures,
                                BrightnessClassifier(), strengths=(-2, -1, 1, 2), batch_size=100)
    stds = result.attribute_stds
    for row in result.strengths:
        assert row.intended_share == 1.0
        assert row.effect == pytest.approx(abs(row.strength) * float(direction.delta.mean()) / stds["brightness"],
                                           rel=1e-6)
        assert row.ratio_to_random > 5  # random directions of the same norm have a mean near 0
        assert row.class_kept == 1.0
    assert result.linearity == pytest.approx(2.0)
    assert result.at(1.0).other_changes["corner"] > 0
    assert "linearity" in result.report() and result.chart().size == (720, 360)
    assert json.loads(result.to_json())["linearity_x2_over_x1"] == pytest.approx(2.0)


def test_class_keeping_evaluation_edits_every_run_with_the_unedited_classes():
    x_T = 0.1 * torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    x_T[:3] += 1.0  # class 1 for the brightness classifier
    pipe = ShiftPipe()
    measures = {"brightness": lambda im: im.mean((1, 2, 3)), "corner": lambda im: im[:, 0, 0, 0]}
    result = evaluate_direction(pipe, Direction(torch.full((2, 2, 2), 0.01)), x_T, torch.ones(3), "brightness",
                                measures, BrightnessClassifier(), strengths=(-1.0, 1.0), random_directions=1,
                                batch_size=12, keep_class=True)
    assert result.class_keeping and json.loads(result.to_json())["class_keeping"] is True
    assert "class-keeping edit" in result.report()
    assert [len(labels) for labels in pipe.keep_calls] == [12, 12]  # 4 runs of 6 samples, 2 per batched call
    for labels in pipe.keep_calls:
        assert labels.tolist() == [1, 1, 1, 0, 0, 0] * 2
    with pytest.raises(HSpaceError, match="needs the classifier"):
        evaluate_direction(pipe, Direction(torch.ones(2, 2, 2)), x_T, torch.ones(3), "slant", keep_class=True)


def test_class_keeping_direction_is_scaled_to_the_plain_edits_effect():
    x_T = 0.1 * torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    measures = {"brightness": lambda im: im.mean((1, 2, 3)), "corner": lambda im: im[:, 0, 0, 0]}
    direction = Direction(torch.full((2, 2, 2), 0.01), meta={"method": "supervised"})
    scaled = class_keeping_direction(ShiftPipe(), direction, x_T, torch.ones(3), "brightness", BrightnessClassifier(),
                                     measures)
    assert scaled.meta["class_keeping_scale"] == pytest.approx(2.0) and scaled.meta["method"] == "supervised"
    assert torch.allclose(scaled.delta, 2 * direction.delta)
    with pytest.raises(HSpaceError, match="wrong way or not at all"):
        class_keeping_direction(ShiftPipe(), direction.with_delta(-direction.delta), x_T, torch.ones(3), "brightness",
                                BrightnessClassifier(), measures)


@pytest.mark.parametrize("kwargs,message", [
    ({"target": "size"}, "target attribute must be one of"),
    ({"strengths": (0.0, 1.0)}, "non-zero strengths"),
    ({"x_T": torch.zeros(1, 1, 4, 4)}, "at least 2 held-out x_T"),
])
def test_evaluation_bad_input(kwargs, message):
    arguments = {"x_T": torch.randn(6, 1, 4, 4), "target": "slant"}
    arguments.update(kwargs)
    with pytest.raises(HSpaceError, match=message):
        evaluate_direction(ShiftPipe(), Direction(torch.ones(2, 2, 2)), arguments["x_T"], torch.ones(3),
                           arguments["target"], strengths=kwargs.get("strengths", (1.0,)))


def known_result():
    x_T = 0.1 * torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    measures = {"brightness": lambda im: im.mean((1, 2, 3)), "corner": lambda im: im[:, 0, 0, 0]}
    return evaluate_direction(ShiftPipe(), Direction(torch.full((2, 2, 2), 0.01)), x_T, torch.ones(3), "brightness",
                              measures, strengths=(-1.0, 1.0, 2.0))


def test_evaluate_direction_node_shows_the_library_report_and_chart(monkeypatch):
    from nodes import evaluate
    from nodes.registry import NODE_CLASS_MAPPINGS

    calls = []
    monkeypatch.setattr(evaluate, "evaluate_on_model", lambda *a, **k: calls.append((a, k)) or known_result())
    direction = Direction(torch.ones(64, 4, 4))
    out = NODE_CLASS_MAPPINGS["HSpaceEvaluateDirection"]().evaluate([direction], "thickness", 16, 5, 10, 3, True)
    report, chart = out["result"]
    assert report == known_result().report() and out["ui"]["text"] == [report]
    assert chart.shape == (1, 360, 720, 3) and 0 <= float(chart.min()) <= float(chart.max()) <= 1
    token_direction = Direction(torch.ones(64, 96), meta={"hook_site": "transformer_blocks.2.output"})
    NODE_CLASS_MAPPINGS["HSpaceEvaluateDirection"]().evaluate([token_direction], "thickness", 16, 5, 10, 3, True)
    (args, kwargs), (dit_args, _) = calls
    assert args == (direction, "thickness", "unet") and kwargs == {
        "samples": 16, "first_seed": 5, "steps": 10, "random_directions": 3, "allow_foreign": True,
        "keep_class": False}
    assert dit_args == (token_direction, "thickness", "dit")  # a direction made at a DiT block: the embedded DiT
    NODE_CLASS_MAPPINGS["HSpaceEvaluateDirection"]().evaluate([direction], "thickness", 16, 5, 10, 3, True, True)
    assert calls[-1][1]["keep_class"] is True
    with pytest.raises(HSpaceError, match="target"):
        NODE_CLASS_MAPPINGS["HSpaceEvaluateDirection"]().evaluate([direction], "size", 16, 5, 10, 3, True)


def test_hspace_evaluate_writes_json_and_chart(tmp_path, capsys):
    """Two held-out seeds at 2 steps, one strength, on a user's (tiny) model: no classifier, so no class figures."""
    from hspace_core.cli import main
    from hspace_core.fileio import save_direction
    from tiny import tiny_unet

    model = tmp_path / "model"
    tiny_unet(channels=1, size=8).save_pretrained(model / "unet")
    direction = Direction(0.5 * torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(0)))
    path = save_direction(direction, tmp_path / "d.safetensors")
    folder = tmp_path / "eval"
    assert main(["evaluate", str(path), "--model", str(model), "--target", "thickness", "--samples", "2", "--steps",
                 "2", "--strengths", "1", "--random-directions", "1", "--out", str(folder)]) == 0
    saved = json.loads((folder / "evaluation.json").read_text())
    assert [row["strength"] for row in saved["strengths"]] == [1.0] and (folder / "evaluation.png").is_file()
    assert saved["strengths"][0]["class_kept"] != saved["strengths"][0]["class_kept"]  # nan: no classifier
    assert "class_kept" in capsys.readouterr().out
    for argv, message in ((["--target", "size"], "--target: one of slant"),
                          (["--target", "slant", "--samples", "1"], "samples"),
                          (["--target", "slant", "--out", str(path)], "--out"),
                          (["--target", "slant", "--model", str(model), "--keep-class"], "shipped classifier")):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(path), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
