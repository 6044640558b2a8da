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


class JointBlock(torch.nn.Module):
    """mmdit.JointBlock's call: (context, x, c=, use_checkpoint=, transformer_options=) -> (context, x); the joint
    attention over [context; x] goes through ComfyUI's attention wrapper, which calls a per-call
    optimized_attention_override as ``override(func, *args, **kwargs)``."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpointed: list[bool] = []

    def forward(self, context, x, c=None, use_checkpoint=True, transformer_options=None):
        self.checkpointed.append(use_checkpoint)
        override = (transformer_options or {}).get("optimized_attention_override")

        def attention(q, k, v, heads, transformer_options=None):
            return q * 2.0

        def run(q):
            return attention(q, q, q, 1) if override is None else override(attention, q, q, q, 1,
                                                                            transformer_options=transformer_options)

        joint = run(torch.cat([context, x], dim=1))
        own = run(x)  # MMDiT-X's second, image-only attention
        return joint[:, :context.shape[1]], joint[:, context.shape[1]:] + own


class MMDiTInner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.joint_blocks = torch.nn.ModuleList(JointBlock() for _ in range(4))


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
    ("mid_block.output", ["attention's output", "'double_blocks.<i>.output'", "'double_blocks.<i>.attn.output'"]),
    ("double_blocks.3.attn.output", ["3 double_blocks", "out of range"]),
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


def test_mmdit_joint_block_replacement_runs_the_block_without_checkpointing():
    model = FakePatcher(SD3(MMDiTInner(), CONST()))
    patched = comfy_adapter.patch_model(model, Recorder(shift=1.0))
    img, txt = torch.randn(2, IMAGE, DIM), torch.randn(2, TEXT, DIM)
    out = patched.replacements()[("double_block", 2)]({"img": img, "txt": txt, "vec": None,
                                                       "transformer_options": options()},
                                                      {"original_block": double_block(img, txt)})
    assert torch.equal(out["img"], img * 4 + 1) and torch.equal(out["txt"], txt * 2)
    assert model.model.diffusion_model.joint_blocks[2].checkpointed == [False]


# -- attention-output sites -------------------------------------------------------------------------------------

def attention_block(seen: dict):
    """A fake Flux block: its joint attention [text; image] runs ComfyUI's attn1_output_patch list of the call."""
    def original_block(args):
        block_options = args["transformer_options"]
        seen["options"] = block_options
        joint = torch.cat([args["txt"], args["img"]], dim=1) if "txt" in args else args["img"]
        attn = joint.clone()
        for patch in (block_options.get("patches") or {}).get("attn1_output_patch", []):
            attn = patch(attn, block_options)
        seen["attn"] = attn
        text = args["txt"].shape[1] if "txt" in args else 0
        return {"img": attn[:, text:], **({"txt": attn[:, :text]} if "txt" in args else {})}

    return original_block


def test_flux_attention_site_edits_the_image_tokens_of_that_block_call_only():
    earlier = []
    model = flux()
    model.model_options["transformer_options"]["patches"] = {"attn1_output_patch": [lambda a, o: earlier.append(1) or a]}
    patched = comfy_adapter.patch_model(model, controller := Recorder(shift=1.0), hook_site="double_blocks.1.attn.output")
    assert list(patched.replacements()) == [("double_block", 1)]
    img, txt = torch.randn(2, IMAGE + REFERENCE, DIM), torch.randn(2, TEXT, DIM)
    call_options = {**patched.model_options["transformer_options"], **options(0.25, reference_image_num_tokens=[REFERENCE])}
    seen: dict = {}
    out = patched.replacements()[("double_block", 1)]({"img": img, "txt": txt, "transformer_options": call_options},
                                                      {"original_block": attention_block(seen)})
    assert earlier == [1]  # a model-wide attention patch still runs, before the edit
    assert torch.equal(out["txt"], txt)  # text tokens of the attention untouched
    assert torch.equal(out["img"][:, :IMAGE], img[:, :IMAGE] + 1.0)
    assert torch.equal(out["img"][:, IMAGE:], img[:, IMAGE:])  # Kontext reference tokens untouched
    assert controller.calls == [((2, IMAGE, DIM), 250.0, [1, 0], 0.25)]
    assert len(call_options["patches"]["attn1_output_patch"]) == 1  # the model's list is not changed
    assert len(model.model_options["transformer_options"]["patches"]["attn1_output_patch"]) == 1


def test_flux_single_block_attention_site_uses_the_image_slice():
    patched = comfy_adapter.patch_model(flux(), Recorder(shift=1.0), hook_site="single_blocks.1.attn.output")
    joint = torch.randn(2, TEXT + IMAGE, DIM)
    seen: dict = {}
    out = patched.replacements()[("single_block", 1)](
        {"img": joint, "transformer_options": options(img_slice=[TEXT, TEXT + IMAGE])},
        {"original_block": attention_block(seen)})["img"]
    assert torch.equal(out[:, :TEXT], joint[:, :TEXT]) and torch.equal(out[:, TEXT:], joint[:, TEXT:] + 1.0)


def test_sd3_attention_site_overrides_the_joint_attention_of_that_block_only():
    model = FakePatcher(SD3(MMDiTInner(), CONST()))
    calls = []

    def model_wide(func, *args, **kwargs):  # e.g. the autograd copy's switch to PyTorch attention
        calls.append(args[0].shape[1])
        return func(*args, **kwargs)

    patched = comfy_adapter.patch_model(model, Recorder(shift=1.0), hook_site="joint_blocks.0.attn.output")
    img, txt = torch.randn(2, IMAGE, DIM), torch.randn(2, TEXT, DIM)
    block_options = options(optimized_attention_override=model_wide)
    out = patched.replacements()[("double_block", 0)]({"img": img, "txt": txt, "vec": None,
                                                       "transformer_options": block_options}, {})
    assert torch.equal(out["txt"], txt * 2)  # the text part of the joint attention untouched
    assert torch.equal(out["img"], (img * 2 + 1) + img * 2)  # the image-only attention untouched
    assert calls == [TEXT + IMAGE, IMAGE]  # the model-wide override still runs every attention
    assert block_options["optimized_attention_override"] is model_wide


def test_a_zero_direction_at_an_attention_site_is_bitwise_plain():
    site = "double_blocks.0.attn.output"
    img, txt = torch.randn(2, IMAGE, DIM), torch.randn(2, TEXT, DIM)
    plain = attention_block({})({"img": img, "txt": txt, "transformer_options": options()})
    for value, same in ((0.0, True), (1.0, False)):
        direction = Direction(torch.full((IMAGE, DIM), value), meta={"hook_site": site})
        patched = comfy_adapter.patch_model(flux(), Bottleneck([EditSpec(direction, 1.0)]), hook_site=site)
        out = patched.replacements()[("double_block", 0)]({"img": img, "txt": txt, "transformer_options": options()},
                                                          {"original_block": attention_block({})})
        assert torch.equal(out["txt"], plain["txt"]) and torch.equal(out["img"], plain["img"]) is same


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
    with pytest.raises(HSpaceError, match="attention's output"):
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


def test_asyrp_f_t_nodes_refuse_a_transformer_before_building_anything():
    from nodes import asyrp_train

    with pytest.raises(HSpaceError, match="pixel DDPM.*not on Flux"):
        asyrp_train.HSpaceAsyrpTrain().train(flux(), None, "a", "b", "tiny", 500, 1, 0.5, 3.0, False)
    with pytest.raises(HSpaceError, match="pixel DDPM.*not on SD3"):
        asyrp_train.HSpaceApplyAsyrpFunction().apply(FakePatcher(SD3(MMDiTInner(), CONST())), "f_t", 1.0, -1, False)
