"""The node classes in plain pytest (no ComfyUI): declarations, and everything a node does without ComfyUI."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from hspace_core import arithmetic
from hspace_core.direction import Direction, Trajectory
from hspace_core.errors import HSpaceError
from modules import load_module
from nodes import _folders, _grid, _v3
from nodes._types import DIRECTION, NOISE, TRAJECTORY
from nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
CORE_TYPES = {"MODEL", "LATENT", "IMAGE", "CONDITIONING", "SIGMAS", "SAMPLER", "VAE", "CLIP", "CLIP_VISION", "MASK", "STRING", "INT", "FLOAT",
              "BOOLEAN"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NODES = sorted(NODE_CLASS_MAPPINGS.items())


def node(name: str):
    return NODE_CLASS_MAPPINGS[name]()


GENERATOR = load_module("make_workflows", ROOT / "scripts" / "make_workflows.py")  # reads V3 schemas' saved copy


def info(name: str) -> dict:
    """The node's declaration as /object_info serves it (a V3 node's from scripts/v3_node_info.json here)."""
    return GENERATOR.node_info(name)


def top_inputs(spec: dict) -> dict[str, tuple]:
    assert set(spec) <= {"required", "optional", "hidden"}
    return {**spec.get("required", {}), **spec.get("optional", {})}


def every_input(spec: dict) -> dict[str, tuple]:
    """All inputs, with those inside a DynamicCombo's options and an Autogrow's template (by their own names)."""
    found = {}
    for name, declaration in top_inputs(spec).items():
        found[name] = declaration
        options = declaration[1] if len(declaration) > 1 else {}
        if declaration[0] == GENERATOR.DYNAMIC_COMBO:
            for option in options["options"]:
                found.update(every_input(option["inputs"]))
        elif declaration[0] == GENERATOR.AUTOGROW:
            found.update(every_input(options["template"]["input"]))
    return found


def entry_point(cls):
    """What ComfyUI calls: a V3 node's classmethod execute, a V1 node's FUNCTION (unbound, self first)."""
    return cls.execute if _v3.is_v3(cls) else getattr(cls, cls.FUNCTION)


def socket_type(declaration: tuple) -> str:
    kind = declaration[0]
    return "COMBO" if isinstance(kind, (list, tuple)) else kind


@pytest.mark.parametrize("name,cls", NODES)
def test_declaration_is_consistent(name, cls):
    declared = info(name)
    assert cls.__name__ == name and name.startswith("HSpace")
    assert callable(entry_point(cls))
    assert declared["category"].startswith("hspace/")
    assert len(declared["output_name"]) == len(declared["output"])
    assert declared["description"].strip() and declared["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[name]
    tooltips = declared["output_tooltips"]  # one per output where given (ComfyUI shows them by index)
    assert not tooltips or (len(tooltips) == len(declared["output"]) and all(t.strip() for t in tooltips))
    assert all(isinstance(a, str) and a.strip() for a in declared["search_aliases"] or [])
    if _v3.is_v3(cls):  # the saved copy of the schema is as fresh as the docstring (regenerate it if not)
        assert declared["description"] == cls.__doc__, "rerun scripts/make_workflows.py inside ComfyUI"


@pytest.mark.parametrize("name,cls", NODES)
def test_every_input_has_a_tooltip_and_the_method_takes_it(name, cls):
    spec = info(name)["input"]
    parameters = dict(inspect.signature(entry_point(cls)).parameters)
    if not _v3.is_v3(cls):
        parameters.pop(next(iter(parameters)))  # self
    hidden = {} if _v3.is_v3(cls) else spec.get("hidden", {})  # a V3 node reads its id from cls.hidden
    for input_name, declaration in every_input(spec).items():
        assert len(declaration) == 2 and declaration[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    for input_name in [*top_inputs(spec), *hidden]:
        assert input_name in parameters, f"{name}'s entry point lacks the parameter {input_name}"
    optional = set(spec.get("optional", {})) | set(hidden)
    for parameter in parameters.values():
        assert parameter.name in top_inputs(spec) or parameter.name in hidden
        if parameter.name in optional:
            assert parameter.default is None, f"{name}: optional input {parameter.name} needs a default"


@pytest.mark.parametrize("name,cls", NODES)
def test_socket_types_are_core_or_hspace(name, cls):
    declared = info(name)
    dynamic = {GENERATOR.DYNAMIC_COMBO, GENERATOR.AUTOGROW}
    types = [socket_type(d) for d in every_input(declared["input"]).values()] + declared["output"]
    for kind in types:
        assert kind in dynamic or kind == "COMBO" or kind in CORE_TYPES or kind in {DIRECTION, TRAJECTORY, NOISE}, \
            f"{name}: {kind}"


@pytest.mark.parametrize("name,cls", NODES)
def test_every_node_has_a_doc_page(name, cls):
    page = ROOT / "web" / "docs" / f"{name}.md"
    assert page.is_file(), f"missing {page}"
    text = page.read_text()
    for input_name in every_input(info(name)["input"]):
        assert f"`{input_name}`" in text, f"{page.name} does not document {input_name}"


def test_the_pack_imports_the_way_comfyui_imports_it(caplog):
    # here comfy_api is absent, as in a ComfyUI too old for V3 nodes: those are left out with one line, the rest load
    v3 = {name for name, cls in NODE_CLASS_MAPPINGS.items() if _v3.is_v3(cls)}
    assert v3 == {"HSpaceInvertImage", "HSpaceSampleFromNoise", "HSpaceJoinDirections"}
    with caplog.at_level("WARNING"):
        module = load_module("hspace_pack_under_test", ROOT / "__init__.py", package=True)
    assert set(module.NODE_CLASS_MAPPINGS) == set(NODE_CLASS_MAPPINGS) - v3
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(module.NODE_CLASS_MAPPINGS)
    (line,) = [r.getMessage() for r in caplog.records if "V3 node API" in r.getMessage()]
    assert all(name in line for name in v3)
    assert (ROOT / module.WEB_DIRECTORY / "js" / "hspace.js").is_file()


# -- directions -------------------------------------------------------------------------------------------
def per_step(seed: int, steps: int = 3, shape=(4, 2, 2)) -> list[Direction]:
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(steps, *shape, generator=generator)
    return [Direction(delta, [900.0 - 300 * i for i in range(steps)], {"method": f"test{seed}"})]


def test_arithmetic_nodes_match_the_library():
    a, b = per_step(1), per_step(2)
    (added,) = node("HSpaceAddDirections").add(a, b)
    (subtracted,) = node("HSpaceSubtractDirections").subtract(a, b)
    (scaled,) = node("HSpaceScaleDirection").scale(a, -2.0)
    (unit,) = node("HSpaceNormalizeDirection").normalize(a, False)
    (halfway,) = node("HSpaceSlerpDirections").slerp(a, b, 0.5)
    torch.testing.assert_close(added[0].delta, a[0].delta + b[0].delta)
    torch.testing.assert_close(subtracted[0].delta, a[0].delta - b[0].delta)
    torch.testing.assert_close(scaled[0].delta, -2 * a[0].delta)
    assert arithmetic.norm(unit[0]) == pytest.approx(1.0, abs=1e-5)
    assert added[0].timesteps == a[0].timesteps
    assert arithmetic.cosine(halfway[0], a[0]) == pytest.approx(arithmetic.cosine(halfway[0], b[0]), abs=1e-5)


def test_sets_join_pick_orthogonalize_and_project_out():
    (joined,) = node("HSpaceJoinDirections").execute({"direction0": per_step(1), "direction1": per_step(2) + per_step(3)})
    assert len(joined) == 3
    (picked,) = node("HSpacePickDirection").pick(joined, 2)
    assert picked[0] is joined[2]
    (orthogonal,) = node("HSpaceOrthogonalizeDirections").orthogonalize(joined)
    assert abs(arithmetic.cosine(orthogonal[2], orthogonal[0])) < 1e-5
    (free,) = node("HSpaceProjectOutDirections").project_out(per_step(4), joined)
    for condition in joined:
        assert abs(arithmetic.cosine(free[0], condition)) < 1e-5
    compared = node("HSpaceCompareDirections").compare(free, [joined[0]])
    assert abs(compared["result"][0]) < 1e-5 and compared["ui"]["text"][0].startswith("cosine:")


def test_single_direction_nodes_refuse_a_set_with_a_hint():
    with pytest.raises(HSpaceError, match="Pick Direction"):
        node("HSpaceScaleDirection").scale(per_step(1) + per_step(2), 2.0)
    with pytest.raises(HSpaceError, match="out of range"):
        node("HSpacePickDirection").pick(per_step(1), 1)
    with pytest.raises(HSpaceError, match="empty"):
        node("HSpaceDirectionInfo").info([])


def test_save_list_load_and_info_in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(_folders.ENV_VAR, str(tmp_path))
    saved = node("HSpaceSaveDirection").save(per_step(1), "edits/smile", overwrite=False)
    again = node("HSpaceSaveDirection").save(per_step(2), "edits/smile", overwrite=False)
    assert Path(saved["ui"]["text"][0]).name == "smile.safetensors"
    assert Path(again["ui"]["text"][0]).name == "smile_00001.safetensors"
    node("HSpaceSaveDirection").save(per_step(1) + per_step(2), "set", overwrite=True)
    names = node("HSpaceLoadDirection").INPUT_TYPES()["required"]["direction_name"][0]
    assert names == ["edits/smile.safetensors", "edits/smile_00001.safetensors", "set.safetensors"]
    assert len(node("HSpaceLoadDirection").load("set.safetensors")["result"][0]) == 2
    loaded = node("HSpaceLoadDirection").load("edits/smile.safetensors")
    direction = loaded["result"][0][0]
    torch.testing.assert_close(direction.delta, per_step(1)[0].delta)
    assert "method: test1" in loaded["result"][1]
    assert loaded["ui"]["hspace_info"][0]["h_shape"] == [4, 2, 2]
    assert NODE_CLASS_MAPPINGS["HSpaceLoadDirection"].IS_CHANGED("edits/smile.safetensors")
    info = node("HSpaceDirectionInfo").info(per_step(1) + per_step(2))
    assert info["result"][0].count("h_shape") == 2 and len(info["ui"]["hspace_info"]) == 2


def test_the_direction_folder_refuses_escaping_names(tmp_path, monkeypatch):
    monkeypatch.setenv(_folders.ENV_VAR, str(tmp_path))
    with pytest.raises(HSpaceError):
        _folders.save_path("../outside", overwrite=True)
    with pytest.raises(HSpaceError):
        _folders.resolve("../outside.safetensors")
    with pytest.raises(HSpaceError, match="no direction named"):
        _folders.resolve("missing.safetensors")


# -- discovery without ComfyUI ----------------------------------------------------------------------------
def test_pca_on_a_synthetic_trajectory_finds_the_planted_direction():
    generator = torch.Generator().manual_seed(0)
    n, steps, shape = 40, 3, (4, 2, 2)
    planted = torch.zeros(shape)
    planted[1, 0, 1] = 1.0
    h = 0.05 * torch.randn(n, steps, *shape, generator=generator)
    h += 3.0 * torch.randn(n, 1, 1, 1, 1, generator=generator) * planted
    trajectory = Trajectory(h, [900.0, 500.0, 100.0], [3.0, 1.0, 0.1], {"fingerprint": {"arch": "Test"}})
    out = node("HSpacePCA").discover(trajectory, 4, per_timestep=True, scaled=False, method="auto")
    directions, spectrum = out["result"]
    assert len(directions) == 4 and directions[0].timesteps == (900.0, 500.0, 100.0)
    assert abs(float((directions[0].delta[0] * planted).sum())) == pytest.approx(1.0, abs=1e-3)
    ratios = out["ui"]["hspace_spectrum"][0]["explained_variance_ratio"]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 0.9
    assert spectrum.startswith("PC0:")
    assert directions[0].meta["fingerprint"] == {"arch": "Test"}


def test_embedded_digits_are_images_of_the_chosen_class():
    (images,) = node("HSpaceEmbeddedDigits").load("3", 5, 2)
    assert images.shape == (5, 16, 16, 3) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    with pytest.raises(HSpaceError, match="no digits left"):
        node("HSpaceEmbeddedDigits").load("3", 5, 50)


def test_labelled_grid_lays_out_strengths_as_columns():
    columns = [torch.full((2, 16, 16, 3), v) for v in (0.0, 0.5, 1.0)]
    grid = _grid.labelled_grid(columns, ["-1", "0", "+1"])
    assert grid.shape == (1, 16 + 2 * (64 + 2) + 2, 3 * (64 + 2) + 2, 3)  # label row, 64-px cells, 2-px padding
    assert float(grid[0, -3, -3, 0]) == pytest.approx(1.0) and float(grid[0, -3, 2, 0]) == pytest.approx(0.0)
    assert float(grid[0, -3, 66 + 2 + 30, 0]) == pytest.approx(128 / 255)


def test_nodes_that_need_comfyui_say_so():
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(HSpaceError, match="ComfyUI"):
        node("HSpaceCaptureH").capture(object(), torch.tensor([1.0, 0.0]), latent, 2, 0, 1.0, 0.0, "memory", "x")


# -- the model patch, on a stand-in for ComfyUI's ModelPatcher ----------------------------------------------
class FakeSampling:
    """ModelSamplingDiscrete's interface: sigma = t / 100, percent 0 -> sigma 10, percent 1 -> sigma 0."""

    sigmas = torch.arange(1, 1001, dtype=torch.float32) / 100

    def timestep(self, sigma):
        return (torch.as_tensor(sigma) * 100).round()

    def percent_to_sigma(self, percent: float) -> float:
        return 10.0 * (1.0 - percent)


class FakeUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.middle_block = torch.nn.Conv2d(4, 4, 1)


class FakePatcher:
    def __init__(self) -> None:
        self.model = type("BaseModel", (), {})()
        self.model.diffusion_model, self.model.model_sampling = FakeUNet(), FakeSampling()
        self.patches: dict[str, list] = {}

    def clone(self) -> "FakePatcher":
        other = FakePatcher.__new__(FakePatcher)
        other.model, other.patches = self.model, {k: list(v) for k, v in self.patches.items()}
        return other

    def set_model_middle_block_after_patch(self, fn) -> None:
        self.patches.setdefault("middle_block_after_patch", []).append(fn)

    def get_model_object(self, name: str):
        return getattr(self.model, name)


def run_patch(model: FakePatcher, h: torch.Tensor, timestep: float, cond_or_uncond=(0,)) -> torch.Tensor:
    options = {"cond_or_uncond": list(cond_or_uncond), "sigmas": torch.tensor([timestep / 100])}
    for patch in model.patches.get("middle_block_after_patch", []):
        h = patch({"h": h, "timesteps": torch.tensor([timestep]), "transformer_options": options})["h"]
    return h


def test_apply_direction_patches_a_clone_within_the_window():
    model = FakePatcher()
    direction = [Direction(torch.ones(4, 2, 2))]
    (patched,) = node("HSpaceApplyDirection").apply(model, direction, 2.0, "percent", 0.0, 0.5, "cond",
                                                       False)
    assert not model.patches and len(patched.patches["middle_block_after_patch"]) == 1
    h = torch.zeros(2, 4, 2, 2)
    torch.testing.assert_close(run_patch(patched, h, 900.0), torch.full_like(h, 2.0))
    torch.testing.assert_close(run_patch(patched, h, 100.0), h)  # after the window (percent 0.5 = t 500)
    edited = run_patch(patched, h, 900.0, cond_or_uncond=(1, 0))  # rows 0 uncond, 1 cond
    assert float(edited[0].abs().max()) == 0.0 and float(edited[1].min()) == 2.0


def test_apply_direction_keeps_the_directions_edit_window_unless_percent_overrides_it():
    model = FakePatcher()
    asyrp = [Direction(torch.ones(4, 2, 2), None, {"edit_window": [500.0, 999.0]})]
    h = torch.zeros(1, 4, 2, 2)
    (own,) = node("HSpaceApplyDirection").apply(model, asyrp, 1.0, "direction", 0.0, 1.0, "both", False)
    assert float(run_patch(own, h, 900.0).min()) == 1.0 and float(run_patch(own, h, 100.0).abs().max()) == 0.0
    (override,) = node("HSpaceApplyDirection").apply(model, asyrp, 1.0, "percent", 0.0, 1.0, "both", False)
    assert float(run_patch(override, h, 100.0).min()) == 1.0


def test_sample_from_noise_boosts_a_ddim_record_with_eta_one_like_the_library(monkeypatch):
    from hspace_core.direction import Inversion
    from hspace_core.samplers import sample_asyrp
    from hspace_core.schedule import VPSchedule, asyrp_timesteps
    from nodes import _sampling, comfy_adapter
    from tiny import GaussianOracle

    model, oracle, schedule = FakePatcher(), GaussianOracle(0.3, 0.5), VPSchedule.linear()
    monkeypatch.setattr(comfy_adapter, "vp_schedule", lambda model_: schedule)
    sigmas = schedule.sigmas_for(asyrp_timesteps(8))
    record = Inversion(torch.randn(1, 4, 2, 2) * float(sigmas[0]), sigmas, None, 0.0, method="ddim")

    def run_in_model_space(model_, fn, sigmas_, latent, positive, negative, cfg, start=None, node_id=None,
                           options=None):
        return {"samples": fn(oracle, start, sigmas_, disable=True, **options)}, None

    monkeypatch.setattr(_sampling, "run_sampler", run_in_model_space)
    mode = {"mode": "asymmetric", "t_edit": 400, "t_boost": 300}
    (boosted,) = node("HSpaceSampleFromNoise").execute(model, record, mode, 1.0, 7)["result"]
    sigma_edit, sigma_boost = float(schedule.sigma(400)), float(schedule.sigma(300))
    library = sample_asyrp(oracle, record.x_T, sigmas, sigma_edit=sigma_edit, sigma_boost=sigma_boost, seed=7,
                           disable=True)  # what HSpacePipeline.edit runs: eta_boost = 1
    deterministic = sample_asyrp(oracle, record.x_T, sigmas, sigma_edit=sigma_edit, sigma_boost=sigma_boost,
                                 eta_boost=0.0, disable=True)
    torch.testing.assert_close(boosted["samples"], library)
    assert (boosted["samples"] - deterministic).abs().max() > 1e-3


def test_apply_direction_refuses_foreign_directions_unless_allowed():
    model = FakePatcher()
    fingerprint = {"arch": "Other", "weights": "0", "h_shape": [4, 2, 2]}
    foreign = [Direction(torch.ones(4, 2, 2), None, {"fingerprint": fingerprint})]
    with pytest.raises(HSpaceError, match="another model"):
        node("HSpaceApplyDirection").apply(model, foreign, 1.0, "direction", 0.0, 1.0, "cond", False)
    (patched,) = node("HSpaceApplyDirection").apply(model, foreign, 1.0, "direction", 0.0, 1.0, "both", True)
    wrong_shape = torch.zeros(1, 8, 2, 2)
    with pytest.raises(HSpaceError, match="does not fit"):
        run_patch(patched, wrong_shape, 500.0)


def test_digit_classifier_direction_contrasts_the_best_and_worst_scored_samples():
    from hspace_core.embedded import load_heldout_digits

    images, labels = load_heldout_digits()
    chosen = torch.cat([images[labels == 0][:4], images[labels == 5][:4]])
    h = torch.cat([torch.ones(4, 2, 3, 2, 2), torch.zeros(4, 2, 3, 2, 2)])
    trajectory = Trajectory(h, [700.0, 200.0], [1.0, 0.2])
    direction, text = node("HSpaceDigitClassifierDirection").discover(trajectory, {"samples": chosen}, "0", 4)
    torch.testing.assert_close(direction[0].delta, torch.ones(2, 3, 2, 2))
    assert text.startswith("p(0): top-4")
    with pytest.raises(HSpaceError, match="samples"):
        node("HSpaceDigitClassifierDirection").discover(trajectory, {"samples": chosen[:5]}, "0", 2)


def test_pca_reads_a_capture_on_disk_a_shard_at_a_time(tmp_path):
    from hspace_core.fileio import TrajectoryWriter

    generator = torch.Generator().manual_seed(3)
    h = torch.randn(12, 2, 3, 2, 2, generator=generator)
    writer = TrajectoryWriter(tmp_path / "capture")
    for chunk in h.split(5):
        writer.append(Trajectory(chunk, [800.0, 300.0], [2.0, 0.4], {"fingerprint": {"arch": "Test"}}))
    sharded = writer.close()
    on_disk = node("HSpacePCA").discover(sharded, 3, True, False, "auto")["result"][0]
    in_memory = node("HSpacePCA").discover(Trajectory(h, [800.0, 300.0], [2.0, 0.4]), 3, True, False, "svd")
    for a, b in zip(on_disk, in_memory["result"][0]):
        assert abs(arithmetic.cosine(a, b)) == pytest.approx(1.0, abs=1e-6)
    assert on_disk[0].timesteps == (800.0, 300.0) and on_disk[0].meta["fingerprint"] == {"arch": "Test"}


def test_the_asyrp_sampler_refuses_a_schedule_below_its_edit_window():
    from nodes.apply import _asyrp_in_window

    with pytest.raises(HSpaceError, match="no step of this schedule reaches t_edit"):
        _asyrp_in_window(None, torch.zeros(1, 1, 2, 2), torch.tensor([1.0, 0.5, 0.0]), sigma_edit=5.0)


def test_the_asyrp_sampler_runs_plain_passes_on_a_model_without_an_hspace_patch():
    """Nothing shifts without a patch: one call per step on the batch as given, bitwise hspace's plain DDIM; a patched
    model (its patch publishes shifts_at) gets the batched [x; x] call in the edit window."""
    from hspace_core.samplers import sample_ddim, with_hspace_flags
    from nodes.apply import _asyrp_in_window

    batches = []

    def model(x, sigma, **kwargs):
        batches.append(x.shape[0])
        return 0.5 * x

    x, sigmas = torch.randn(2, 1, 2, 2), torch.tensor([2.0, 1.0, 0.0])
    plain = _asyrp_in_window(model, x, sigmas, extra_args={}, sigma_edit=0.5, mode="asymmetric")
    assert batches == [2, 2] and torch.equal(plain, sample_ddim(model, x, sigmas))
    batches.clear()
    _asyrp_in_window(model, x, sigmas, extra_args=with_hspace_flags({}, shifts_at=lambda sigma: True), sigma_edit=0.5,
                     mode="asymmetric")
    assert batches == [4, 4]


def test_supervised_direction_is_the_mean_difference_keyed_by_timestep():
    generator = torch.Generator().manual_seed(1)
    positive = Trajectory(torch.randn(5, 2, 4, 2, 2, generator=generator) + 1.0, [800.0, 400.0], [2.0, 0.5])
    negative = Trajectory(torch.randn(7, 2, 4, 2, 2, generator=generator), [800.0, 400.0], [2.0, 0.5])
    (direction,) = node("HSpaceSupervisedDirection").discover(positive, negative, "mean_difference")
    torch.testing.assert_close(direction[0].delta, positive.h.mean(0) - negative.h.mean(0))
    assert direction[0].timesteps == (800.0, 400.0)
    (probe,) = node("HSpaceSupervisedDirection").discover(positive, negative, "linear_probe")
    assert arithmetic.norm(probe[0]) == pytest.approx(1.0, abs=1e-5)
    assert arithmetic.cosine(probe[0], direction[0]) > 0.5
    other = Trajectory(negative.h, [700.0, 300.0], [1.5, 0.4])
    with pytest.raises(HSpaceError, match="share their steps"):
        node("HSpaceSupervisedDirection").discover(positive, other, "mean_difference")
