"""The ComfyUI adapter on Flux / SD3 layouts in plain pytest: fake ModelPatchers recording
``set_model_patch_replace``, replacements called the way comfy/ldm/flux/model.py and mmdit.py call them.

The same code runs against ComfyUI's own Flux classes in tests/comfyui/test_transformer_comfyui.py.
"""
from __future__ import annotations

import copy

import pytest
import torch

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError
from nodes import _sampling, apply, comfy_adapter

DIM, TEXT, IMAGE, REFERENCE = 4, 3, 6, 2


class CONST:
    """Stands in for ComfyUI's ModelSamplingFlux (a CONST subclass): timestep = sigma, as in Flux."""

    sigmas = torch.linspace(0.001, 1.0, 1000)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma)

    def percent_to_sigma(self, percent: float) -> float:
        return 1.0 - percent


class Discrete:
    sigmas = torch.arange(1, 1001, dtype=torch.float32) / 100


def blocks(count: int) -> torch.nn.ModuleList:
    return torch.nn.ModuleList(torch.nn.Linear(DIM, DIM) for _ in range(count))


class FluxInner(torch.nn.Module):
    def __init__(self, single: bool = True) -> None:
        super().__init__()
        self.hidden_size = DIM
        self.double_blocks = blocks(3)
        if single:
            self.single_blocks = blocks(2)


class MMDiTInner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.joint_blocks = blocks(4)


class BaseModel:
    def __init__(self, inner: torch.nn.Module, sampling: object):
        self.diffusion_model = inner
        self.model_sampling = sampling


class Flux(BaseModel):
    pass


class SD3(BaseModel):
    pass


class Chroma(BaseModel):
    pass


class FakePatcher:
    """The parts of ComfyUI's ModelPatcher the adapter uses for transformers."""

    def __init__(self, base: BaseModel):
        self.model = base
        self.model_options: dict = {"transformer_options": {}}

    def clone(self) -> "FakePatcher":
        other = FakePatcher(self.model)
        other.model_options = copy.copy(self.model_options)
        other.model_options["transformer_options"] = copy.deepcopy(self.model_options["transformer_options"])
        return other

    def set_model_patch_replace(self, patch, name: str, block_name: str, number: int) -> None:
        options = self.model_options["transformer_options"]
        options.setdefault("patches_replace", {}).setdefault(name, {})[(block_name, number)] = patch

    def get_model_object(self, name: str):
        return getattr(self.model, name)

    def replacements(self) -> dict:
        return self.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})


def flux(sampling: object | None = None, single: bool = True) -> FakePatcher:
    return FakePatcher(Flux(FluxInner(single), sampling or CONST()))


class Recorder:
    def __init__(self, shift: float = 1.0):
        self.calls: list[tuple] = []
        self.shift = shift

    def __call__(self, h, timestep, cond_or_uncond, flags, sigma=None):
        self.calls.append((tuple(h.shape), round(float(timestep), 6), list(cond_or_uncond), sigma))
        return h + self.shift


def options(sigma: float = 0.5, **more) -> dict:
    return {"sigmas": torch.tensor([sigma, sigma]), "cond_or_uncond": [1, 0], **more}


def double_block(img: torch.Tensor, txt: torch.Tensor):
    """A fake original_block of a double (joint) block: Flux's block_wrap returns {"img", "txt"}."""
    return lambda args: {"img": args["img"] * 2.0, "txt": args["txt"] * 3.0}


# -- families ------------------------------------------------------------------------------------------------

def test_families_and_their_default_sites():
    assert comfy_adapter.family(flux()) == "Flux"
    assert comfy_adapter.default_site(flux()) == "double_blocks.1.output"
    sd3 = FakePatcher(SD3(MMDiTInner(), CONST()))
    assert comfy_adapter.default_site(sd3) == "joint_blocks.2.output"
    assert comfy_adapter.noise_form(sd3).name == "flow"


@pytest.mark.parametrize("model, words", [
    (FakePatcher(Chroma(FluxInner(), CONST())), ["Chroma", "FluxInner", "not supported", "patches_replace"]),
    (flux(single=False), ["Flux", "single_blocks", "patches_replace"]),
    (flux(Discrete()), ["Flux", "Discrete", "CONST"]),
])
def test_unsupported_families_are_refused_naming_the_family_and_what_is_missing(model, words):
    with pytest.raises(HSpaceError) as err:
        comfy_adapter.patch_model(model, Recorder())
    assert all(word in str(err.value) for word in words), str(err.value)


@pytest.mark.parametrize("site, words", [
    ("mid_block.output", ["block output", "'double_blocks.<i>.output'"]),
    ("double_blocks.1.attn.output", ["block output"]),
    ("single_blocks.2.output", ["2 single_blocks", "out of range"]),
    ("transformer_blocks.0.output", ["'single_blocks.<i>.output'"]),
])
def test_sites_a_flux_model_cannot_be_hooked_at_are_refused(site, words):
    with pytest.raises(HSpaceError) as err:
        comfy_adapter.patch_model(flux(), Recorder(), hook_site=site)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_unet_patch_points_are_refused_on_a_transformer():
    with pytest.raises(HSpaceError, match="UNet patch point"):
        comfy_adapter.patch_model(flux(), Recorder(), site="middle")


# -- the block replacement --------------------------------------------------------------------------------------

def test_double_block_replacement_shifts_the_image_tokens_on_a_clone():
    model = flux()
    controller = Recorder(shift=1.0)
    patched = comfy_adapter.patch_model(model, controller)
    assert model.replacements() == {} and list(patched.replacements()) == [("double_block", 1)]
    img, txt = torch.randn(2, IMAGE, DIM), torch.randn(2, TEXT, DIM)
    args = {"img": img, "txt": txt, "vec": None, "pe": None, "transformer_options": options(0.25)}
    out = patched.replacements()[("double_block", 1)](args, {"original_block": double_block(img, txt)})
    assert torch.equal(out["img"], img * 2.0 + 1.0) and torch.equal(out["txt"], txt * 3.0)
    assert controller.calls == [((2, IMAGE, DIM), 250.0, [1, 0], 0.25)]  # hspace's flow timesteps: 1000 sigma


def test_single_block_replacement_edits_only_the_image_slice():
    patched = comfy_adapter.patch_model(flux(), controller := Recorder(shift=1.0), hook_site="single_blocks.0.output")
    (key,) = patched.replacements()
    assert key == ("single_block", 0)
    joint = torch.randn(2, TEXT + IMAGE + REFERENCE, DIM)
    transformer_options = options(img_slice=[TEXT, TEXT + IMAGE + REFERENCE], reference_image_num_tokens=[REFERENCE])
    out = patched.replacements()[key]({"img": joint, "vec": None, "pe": None, "transformer_options": transformer_options},
                                      {"original_block": lambda args: {"img": args["img"].clone()}})["img"]
    assert torch.equal(out[:, :TEXT], joint[:, :TEXT])  # text tokens untouched
    assert torch.equal(out[:, TEXT:TEXT + IMAGE], joint[:, TEXT:TEXT + IMAGE] + 1.0)
    assert torch.equal(out[:, TEXT + IMAGE:], joint[:, TEXT + IMAGE:])  # Kontext reference tokens untouched
    assert controller.calls[0][0] == (2, IMAGE, DIM)


def test_zero_direction_is_bitwise_the_block_output_and_a_direction_moves_it():
    site = "double_blocks.1.output"
    img, txt = torch.randn(2, IMAGE, DIM), torch.randn(2, TEXT, DIM)
    args = {"img": img, "txt": txt, "vec": None, "pe": None, "transformer_options": options()}
    plain = double_block(img, txt)(args)
    for value, same in ((0.0, True), (1.0, False)):
        direction = Direction(torch.full((IMAGE, DIM), value), meta={"hook_site": site})
        patched = comfy_adapter.patch_model(flux(), Bottleneck([EditSpec(direction, 1.0)]), hook_site=site)
        out = patched.replacements()[("double_block", 1)](args, {"original_block": double_block(img, txt)})
        assert torch.equal(out["txt"], plain["txt"])
        assert torch.equal(out["img"], plain["img"]) is same


def test_a_second_patch_on_the_same_block_runs_the_first():
    first = comfy_adapter.patch_model(flux(), Recorder(shift=1.0))
    second = comfy_adapter.patch_model(first, Recorder(shift=10.0))
    img, txt = torch.zeros(1, IMAGE, DIM), torch.zeros(1, TEXT, DIM)
    args = {"img": img, "txt": txt, "transformer_options": options()}
    out = second.replacements()[("double_block", 1)](args, {"original_block": double_block(img, txt)})
    assert torch.equal(out["img"], torch.full_like(img, 11.0))


def test_mmdit_joint_block_replacement():
    patched = comfy_adapter.patch_model(FakePatcher(SD3(MMDiTInner(), CONST())), Recorder(shift=1.0))
    img, txt = torch.randn(2, IMAGE, DIM), torch.randn(2, TEXT, DIM)
    out = patched.replacements()[("double_block", 2)]({"img": img, "txt": txt, "vec": None,
                                                       "transformer_options": options()},
                                                      {"original_block": double_block(img, txt)})
    assert torch.equal(out["img"], img * 2 + 1) and torch.equal(out["txt"], txt * 3)


# -- schedules and nodes ----------------------------------------------------------------------------------------

def test_flow_timesteps_are_a_thousand_sigma():
    model = flux()
    assert float(comfy_adapter.timestep_to_sigma(model, 400)) == pytest.approx(0.4)
    assert comfy_adapter.percent_window(model, 0.0, 0.5) == pytest.approx((500.0, 1000.0))
    assert _sampling.asyrp_options(model, "asymmetric", 400, 0)["sigma_edit"] == pytest.approx(0.4)
    with pytest.raises(HSpaceError, match="999"):
        _sampling.check_timestep(model, 1000, "t_edit")


def test_apply_direction_hooks_the_direction_site_and_refuses_other_sites():
    model = flux()
    site = "single_blocks.1.output"
    direction = Direction(torch.ones(IMAGE, DIM), meta={"hook_site": site,
                                                        "fingerprint": _sampling.fingerprint(model, (IMAGE, DIM), site)})
    patched = apply.apply_direction(model, [direction], 1.0, "direction", 0.0, 1.0, "both", False)
    assert list(patched.replacements()) == [("single_block", 1)]
    with pytest.raises(HSpaceError, match="block output"):
        apply.apply_direction(model, [Direction(torch.ones(2, 2, 2))], 1.0, "direction", 0.0, 1.0, "both", False)
    other = Direction(torch.ones(IMAGE, DIM), meta={"hook_site": "double_blocks.0.output",
                                                    "fingerprint": direction.meta["fingerprint"]})
    with pytest.raises(HSpaceError, match="hook site"):
        apply.apply_direction(model, [other], 1.0, "direction", 0.0, 1.0, "both", False)
    wide = Direction(torch.ones(IMAGE, DIM + 1), meta={"hook_site": site})
    with pytest.raises(HSpaceError, match="h shape"):
        apply.apply_direction(model, [wide], 1.0, "direction", 0.0, 1.0, "both", True)


def test_supervised_direction_keeps_the_site_and_refuses_two_sites():
    from hspace_core.direction import Trajectory
    from nodes import discovery

    def trajectory(site: str, value: float) -> Trajectory:
        return Trajectory(torch.full((2, 3, IMAGE, DIM), value), [900, 500, 100], [0.9, 0.5, 0.1], {"hook_site": site})

    node = discovery.HSpaceSupervisedDirection()
    (direction,) = node.discover(trajectory("double_blocks.1.output", 1.0), trajectory("double_blocks.1.output", 0.0),
                                 "mean_difference")[0]
    assert direction.meta["hook_site"] == "double_blocks.1.output" and direction.delta.shape == (3, IMAGE, DIM)
    with pytest.raises(HSpaceError, match="one hook site"):
        node.discover(trajectory("double_blocks.1.output", 1.0), trajectory("double_blocks.0.output", 0.0),
                      "mean_difference")
