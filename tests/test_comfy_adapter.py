"""The ComfyUI adapter and the pixel-model glue in plain pytest, with fake ComfyUI objects (no ComfyUI needed).

The same code runs against a real ComfyUI in tests/comfyui/ (when COMFYUI_PATH is set).
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError
from nodes import _comfy, comfy_adapter, pixel_latents, pixel_model, pixel_nodes

REPO = Path(__file__).resolve().parents[1]
requires_no_comfy = pytest.mark.skipif(_comfy.available(), reason="ComfyUI is importable here")


# -- fakes ------------------------------------------------------------------------------------------------------

class FakeSampling:
    """Stands in for ComfyUI's ModelSamplingDiscrete: integer timesteps, sigma = t / 100."""

    sigmas = torch.arange(1, 1001, dtype=torch.float32) / 100

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(sigma) * 100).round()

    def percent_to_sigma(self, percent: float) -> float:
        return (1.0 - percent) * 10.0


class FakeUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.middle_block = torch.nn.Identity()


class Flux(torch.nn.Module):
    """A DiT: no middle block."""


class FakeBaseModel:
    def __init__(self, inner: torch.nn.Module):
        self.diffusion_model = inner
        self.model_sampling = FakeSampling()


class FakePatcher:
    """The parts of ComfyUI's ModelPatcher that the adapter uses."""

    def __init__(self, inner: torch.nn.Module, middle_patch: bool = True):
        self.model = FakeBaseModel(inner)
        self.patches: dict[str, list] = {}
        self.model_options: dict = {"transformer_options": {}}
        if middle_patch:
            self.set_model_middle_block_after_patch = lambda fn: self.set_model_patch(fn, "middle_block_after_patch")

    def clone(self) -> "FakePatcher":
        other = FakePatcher.__new__(FakePatcher)
        other.__dict__.update(self.__dict__)
        other.patches = {k: list(v) for k, v in self.patches.items()}
        other.model_options = copy.deepcopy(self.model_options)
        if hasattr(self, "set_model_middle_block_after_patch"):
            other.set_model_middle_block_after_patch = lambda fn: other.set_model_patch(fn, "middle_block_after_patch")
        return other

    def set_model_patch(self, fn, name: str) -> None:
        self.patches.setdefault(name, []).append(fn)

    def set_model_output_block_patch(self, fn) -> None:
        self.set_model_patch(fn, "output_block_patch")

    def get_model_object(self, name: str):
        return getattr(self.model, name)


class Recorder:
    def __init__(self, shift: float = 1.0):
        self.calls: list[tuple] = []
        self.shift = shift

    def __call__(self, h, timestep, cond_or_uncond, flags, sigma=None):
        self.calls.append((float(timestep), list(cond_or_uncond), dict(flags), None if sigma is None else float(sigma)))
        return h + self.shift


# -- imports --------------------------------------------------------------------------------------------------------

def test_node_modules_import_without_comfyui():
    code = ("import sys, types; pack = types.ModuleType('hspace_pack'); pack.__path__ = ['.']; "
            "sys.modules['hspace_pack'] = pack; "
            "import hspace_pack.nodes._comfy, hspace_pack.nodes.comfy_adapter, hspace_pack.nodes.pixel_model; "
            "assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@requires_no_comfy
def test_comfy_only_helpers_explain_that_comfyui_is_needed():
    assert comfy_adapter.progress_callback(3) is None
    with pytest.raises(HSpaceError, match="needs ComfyUI"):
        comfy_adapter.as_comfy_sampler(lambda *a, **k: None)
    with pytest.raises(HSpaceError, match="needs ComfyUI"):
        _comfy.require("comfy.samplers")
    assert _comfy.optional("comfy.utils") is None


# -- refusing models without a middle block ----------------------------------------------------------------------

def test_model_without_middle_block_is_refused_with_its_class_name():
    model = FakePatcher(Flux())
    with pytest.raises(HSpaceError) as err:
        comfy_adapter.patch_model(model, Recorder())
    message = str(err.value)
    assert "FakeBaseModel" in message and "Flux" in message and "middle block" in message
    assert "DiT" in message
    assert isinstance(err.value, ValueError)


def test_not_a_model_is_refused():
    with pytest.raises(HSpaceError, match="ComfyUI MODEL"):
        comfy_adapter.patch_model(object(), Recorder())


# -- the middle-block patch -----------------------------------------------------------------------------------------

def test_patch_model_registers_on_a_clone_and_calls_the_controller():
    model = FakePatcher(FakeUNet())
    controller = Recorder(shift=2.0)
    patched = comfy_adapter.patch_model(model, controller)
    assert patched is not model and model.patches == {}
    (patch,) = patched.patches["middle_block_after_patch"]
    h = torch.zeros(4, 3, 2, 2)
    options = {"sigmas": torch.tensor([5.0]), "cond_or_uncond": [1, 0], "hspace": {"shift": False}}
    args = {"h": h, "x": None, "timesteps": torch.tensor([500.0] * 4), "transformer_options": options}
    out = patch(args)
    assert torch.equal(out["h"], h + 2.0) and out["timesteps"] is args["timesteps"]
    assert controller.calls == [(500.0, [1, 0], {"shift": False}, 5.0)]


def test_the_patched_model_tells_the_sampler_where_anything_shifts():
    direction = Direction(torch.ones(1, 2, 2), None, {"edit_window": [500, 999]})
    model = FakePatcher(FakeUNet())
    first = comfy_adapter.patch_model(model, Bottleneck([EditSpec(direction, 1.0)]))
    shifts_at = first.model_options["transformer_options"]["hspace"]["shifts_at"]
    assert shifts_at(6.0) and not shifts_at(4.0)  # t = 600 is in the direction's window, t = 400 is not
    assert "hspace" not in model.model_options["transformer_options"]  # the input MODEL is unchanged
    zero = comfy_adapter.patch_model(model, Bottleneck([EditSpec(direction, 0.0)]))
    assert not zero.model_options["transformer_options"]["hspace"]["shifts_at"](6.0)
    chained = comfy_adapter.patch_model(zero, Bottleneck([EditSpec(direction, 1.0)], window=(0, 300)))
    chained_shifts = chained.model_options["transformer_options"]["hspace"]["shifts_at"]
    assert chained_shifts(2.0) and not chained_shifts(6.0)  # the later patch's window; the earlier one adds zero


def test_timestep_falls_back_to_sigmas_and_rows_to_cond():
    patched = comfy_adapter.patch_model(FakePatcher(FakeUNet()), controller := Recorder())
    (patch,) = patched.patches["middle_block_after_patch"]
    patch({"h": torch.zeros(1, 1, 1, 1), "transformer_options": {"sigmas": torch.tensor([2.5])}})
    assert controller.calls == [(250.0, [0], {}, 2.5)]


def test_output_block_fallback_acts_only_at_output_block_zero():
    model = FakePatcher(FakeUNet(), middle_patch=False)
    controller = Recorder(shift=1.0)
    patched = comfy_adapter.patch_model(model, controller)
    assert "middle_block_after_patch" not in patched.patches
    (patch,) = patched.patches["output_block_patch"]
    h, hsp = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    options = {"sigmas": torch.tensor([1.0]), "cond_or_uncond": [0]}
    out_h, out_hsp = patch(h, hsp, {**options, "block": ("output", 1)})
    assert out_h is h and out_hsp is hsp and controller.calls == []
    out_h, out_hsp = patch(h, hsp, {**options, "block": ("output", 0)})
    assert torch.equal(out_h, h + 1.0) and out_hsp is hsp
    assert controller.calls == [(100.0, [0], {}, 1.0)]


def test_site_choice():
    model = FakePatcher(FakeUNet())
    assert "output_block_patch" in comfy_adapter.patch_model(model, Recorder(), site="output0").patches
    with pytest.raises(HSpaceError, match="site"):
        comfy_adapter.patch_model(model, Recorder(), site="input")
    with pytest.raises(HSpaceError, match="no set_model_middle_block_after_patch"):
        comfy_adapter.patch_model(FakePatcher(FakeUNet(), middle_patch=False), Recorder(), site="middle")


def test_pixel_wrapper_always_gets_the_named_middle_patch():
    wrapper = pixel_model.DiffusersUNetWrapper(_tiny_unet())
    patched = comfy_adapter.patch_model(FakePatcher(wrapper, middle_patch=False), Recorder())
    assert len(patched.patches["middle_block_after_patch"]) == 1
    with pytest.raises(HSpaceError, match="UNetModel"):
        comfy_adapter.patch_model(FakePatcher(wrapper), Recorder(), site="output0")


# -- autograd helpers ------------------------------------------------------------------------------------------------

def test_grad_ready_turns_inference_tensors_into_normal_ones():
    with torch.inference_mode():
        t = torch.ones(3)
        copy = comfy_adapter.grad_ready(t)
    assert t.is_inference() and not copy.is_inference()
    with comfy_adapter.autograd_enabled():
        x = copy.requires_grad_(True)
        (x * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


class FakeTorchBaseModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.diffusion_model = torch.nn.Linear(2, 2)
        self.other = torch.nn.Linear(2, 2)
        self.current_patcher = "patcher"


def test_copied_unet_is_autograd_capable_and_leaves_the_original_alone():
    with torch.inference_mode():
        base = FakeTorchBaseModel()
    copy = comfy_adapter._with_copied_unet(base)
    assert base.diffusion_model.weight.is_inference() and not copy.diffusion_model.weight.is_inference()
    assert copy.other is base.other and copy.current_patcher is None and base.current_patcher == "patcher"
    assert copy.diffusion_model is not base.diffusion_model and base._modules["diffusion_model"] is base.diffusion_model
    torch.testing.assert_close(copy.diffusion_model.weight, base.diffusion_model.weight.clone())
    x = torch.ones(1, 2, requires_grad=True)
    copy.diffusion_model(x).sum().backward()
    assert x.grad is not None


def test_autograd_copy_without_clone_support_is_a_clear_error():
    with pytest.raises(HSpaceError, match="autograd-capable copy of FakePatcher"):
        comfy_adapter.autograd_copy(FakePatcher(FakeUNet()))


class _OnceDifferentiableAttention(torch.autograd.Function):
    """Attention like xformers' kernel: a backward, but no derivative of that backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            out = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        return torch.autograd.grad(out, (q, k, v), grad)


def _fake_attention_module(active: str):
    """comfy.ldm.modules.attention as the adapter sees it: the active backend and ComfyUI's PyTorch one."""
    import types

    def attention_pytorch(q, k, v, **kwargs):
        return torch.softmax(q @ k.transpose(-1, -2), -1) @ v

    def attention_xformers(q, k, v, **kwargs):
        return _OnceDifferentiableAttention.apply(q, k, v)

    module = types.SimpleNamespace(attention_pytorch=attention_pytorch, attention_xformers=attention_xformers)
    module.optimized_attention = getattr(module, active)
    return module


def _attention_as_comfy_calls_it(module, transformer_options):
    """ComfyUI's wrap_attn: a per-call override in transformer_options wins over the active function."""
    active = module.optimized_attention
    override = transformer_options.get("optimized_attention_override")
    return (lambda *a, **kw: override(active, *a, **kw)) if override else active


def _second_derivative(attention):
    q, k, v = (torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    (grad,) = torch.autograd.grad(attention(q, k, v).square().sum(), q, create_graph=True)
    return torch.autograd.grad(grad.sum(), k)


class FakeOverridePatcher(FakePatcher):
    def set_model_optimized_attention(self, attention):  # ComfyUI's ModelPatcher method, same contract
        self.model_options["transformer_options"]["optimized_attention_override"] = (
            lambda _, *args, **kwargs: attention(*args, **kwargs))


def test_jacobian_copies_run_pytorch_attention_where_xformers_is_active(monkeypatch):
    module = _fake_attention_module("attention_xformers")
    monkeypatch.setattr(_comfy, "optional", lambda name: module if name == "comfy.ldm.modules.attention" else None)
    with pytest.raises(RuntimeError):  # what the products would hit without the switch
        _second_derivative(_attention_as_comfy_calls_it(module, {}))
    patcher = comfy_adapter.differentiable_attention(FakeOverridePatcher(FakeUNet()))
    options = patcher.model_options["transformer_options"]
    assert _second_derivative(_attention_as_comfy_calls_it(module, options))[0].abs().sum() > 0
    with pytest.raises(HSpaceError, match="runs attention_xformers, which has none.*start ComfyUI with --use-pytorch-cross-attention$"):
        comfy_adapter.differentiable_attention(FakePatcher(FakeUNet()))  # a ComfyUI without the per-model switch


def test_differentiable_attention_is_left_alone(monkeypatch):
    module = _fake_attention_module("attention_pytorch")
    monkeypatch.setattr(_comfy, "optional", lambda name: module if name == "comfy.ldm.modules.attention" else None)
    patcher = comfy_adapter.differentiable_attention(FakePatcher(FakeUNet()))  # no switch needed, none asked for
    assert "optimized_attention_override" not in patcher.model_options["transformer_options"]
    monkeypatch.setattr(_comfy, "optional", lambda name: None)  # outside ComfyUI
    assert comfy_adapter.differentiable_attention(FakePatcher(FakeUNet())).model_options["transformer_options"] == {}


# -- pixel models ------------------------------------------------------------------------------

def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()


def test_wrapper_equals_the_unet_and_runs_the_middle_patches():
    unet = _tiny_unet()
    wrapper = pixel_model.DiffusersUNetWrapper(unet)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 10.0])
    with torch.no_grad():
        plain = unet(x, t).sample
        assert torch.equal(wrapper(x, t, transformer_options={}), plain)
        seen = []

        def patch(args):
            seen.append((tuple(args["h"].shape), args["transformer_options"]["block"], args["timesteps"]))
            return {**args, "h": args["h"] + 1.0}

        shifted = wrapper(x, t, transformer_options={"patches": {"middle_block_after_patch": [patch]}})
    assert seen == [((2, 16, 4, 4), ("middle", 0), t)]
    assert not torch.equal(shifted, plain)
    assert not unet.mid_block._forward_hooks  # the hook lives only for the call
    assert wrapper.middle_block is unet.mid_block


def test_comfy_sampling_settings_from_diffusers_configs():
    settings, kind = pixel_model.comfy_sampling_settings({"beta_schedule": "linear", "beta_start": 1e-4,
                                                          "beta_end": 0.02, "num_train_timesteps": 1000})
    assert settings == {"beta_schedule": "sqrt_linear", "linear_start": 1e-4, "linear_end": 0.02, "timesteps": 1000}
    assert kind == "EPS"
    settings, kind = pixel_model.comfy_sampling_settings({"beta_schedule": "scaled_linear",
                                                          "prediction_type": "v_prediction"})
    assert settings["beta_schedule"] == "linear" and kind == "V_PREDICTION"
    with pytest.raises(HSpaceError, match="beta_schedule"):
        pixel_model.comfy_sampling_settings({"beta_schedule": "exp"})
    with pytest.raises(HSpaceError, match="prediction_type"):
        pixel_model.comfy_sampling_settings({"prediction_type": "sample"})


# ComfyUI's make_beta_schedule (comfy/ldm/modules/diffusionmodules/util.py), by the names it takes
COMFY_BETAS = {"linear": lambda start, end, n: torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2,
               "sqrt_linear": lambda start, end, n: torch.linspace(start, end, n, dtype=torch.float64)}


@pytest.mark.parametrize("diffusers_name,start,end", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012)])
def test_comfy_linear_names_match_the_ddpm_schedule(diffusers_name, start, end):
    """The settings the pixel loader gives ComfyUI make ComfyUI build the schedule hspace_core uses for that config
    (ComfyUI's "sqrt_linear" is linear in beta, DDPM; its "linear" is linear in sqrt(beta), Stable Diffusion)."""
    from hspace_core.schedule import VPSchedule

    config = {"beta_schedule": diffusers_name, "beta_start": start, "beta_end": end, "num_train_timesteps": 1000}
    settings, _ = pixel_model.comfy_sampling_settings(config)
    betas = COMFY_BETAS[settings["beta_schedule"]](settings["linear_start"], settings["linear_end"],
                                                   settings["timesteps"])
    torch.testing.assert_close(VPSchedule.from_diffusers_config(config).alphas_cumprod, torch.cumprod(1 - betas, 0))


def test_latent_image_round_trip():
    latents = torch.rand(2, 1, 4, 4) * 2 - 1
    images = pixel_latents.latent_to_image(latents)
    assert images.shape == (2, 4, 4, 3) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(pixel_latents.image_to_latent(images, 1), latents)
    rgb = torch.rand(1, 4, 4, 3) * 2 - 1
    torch.testing.assert_close(pixel_latents.image_to_latent(pixel_latents.latent_to_image(rgb.movedim(-1, 1)), 3),
                               rgb.movedim(-1, 1).clamp(-1, 1))
    with pytest.raises(HSpaceError, match="pixel latents"):
        pixel_latents.latent_to_image(torch.zeros(1, 4, 2, 2))
    with pytest.raises(HSpaceError, match="channels"):
        pixel_latents.image_to_latent(torch.zeros(1, 2, 2, 3), 4)


@pytest.mark.parametrize("layout", ["pipeline", "model"])
def test_diffusers_folders_load(tmp_path, layout):
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = _tiny_unet()
    if layout == "pipeline":  # model_index.json, unet/, scheduler/ (what DDPMPipeline.save_pretrained writes)
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    else:  # config.json + weights + scheduler_config.json side by side (google/ddpm-ema-* on the Hub)
        unet.save_pretrained(tmp_path)
        DDPMScheduler(beta_schedule="linear").save_pretrained(tmp_path)
    loaded, config = pixel_model.load_unet_and_schedule(str(tmp_path))
    assert loaded.config.in_channels == 1 and config["beta_schedule"] == "linear"
    torch.testing.assert_close(loaded.conv_in.weight, unet.conv_in.weight)


def test_diffusers_folder_errors(tmp_path):
    with pytest.raises(HSpaceError, match="diffusers folder"):
        pixel_model.load_unet_and_schedule(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(HSpaceError, match="scheduler_config.json"):
        pixel_model.load_unet_and_schedule(str(tmp_path))


def test_pixel_unet_checks():
    with pytest.raises(HSpaceError, match="mid_block"):
        pixel_model.check_pixel_unet(torch.nn.Linear(1, 1))


def test_pixel_nodes_declare_and_run_without_comfyui():
    for cls in pixel_nodes.NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        assert "required" in inputs and isinstance(cls.RETURN_TYPES, tuple) and hasattr(cls, cls.FUNCTION)
    assert pixel_model.EMBEDDED in pixel_nodes.HSpacePixelModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    (image,) = pixel_nodes.HSpacePixelLatentToImage().convert({"samples": torch.zeros(1, 1, 4, 4)})["result"]
    assert torch.allclose(image, torch.full((1, 4, 4, 3), 0.5))
    (cond,) = pixel_nodes.HSpaceUnconditional().make()
    assert isinstance(cond, list) and cond[0][1] == {}



def test_offset_callback_puts_each_run_on_the_nodes_one_bar():
    seen = []
    callback = _comfy.offset_callback(lambda step, x0, x, total: seen.append((step, total)), done=6, total=9)
    callback(0, None, None, 3)
    callback(2, None, None, 3)
    assert seen == [(6, 9), (8, 9)]
    assert _comfy.offset_callback(None, 0, 3) is None


# -- a direction from another model: the advice fits the shapes ---------------------------------------------------

class ConvUNet(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.middle_block = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1))


def foreign_direction(channels: int):
    from hspace_core.direction import Direction

    return [Direction(torch.ones(1, channels, 2, 2), [500.0],
                      {"fingerprint": {"arch": "OtherModel", "weights": "0", "h_shape": [channels, 2, 2]}})]


def test_a_direction_whose_channels_cannot_fit_is_refused_without_suggesting_allow_foreign():
    from nodes.apply import apply_direction

    with pytest.raises(HSpaceError) as err:
        apply_direction(FakePatcher(ConvUNet(8)), foreign_direction(4), 1.0, "percent", 0.0, 1.0, "cond", True)
    assert "[4, 2, 2]" in str(err.value) and "[8, 2, 2]" in str(err.value) and "allow foreign" not in str(err.value)


def test_a_same_shape_foreign_direction_suggests_allow_foreign_and_applies_with_it():
    from nodes.apply import apply_direction

    with pytest.raises(HSpaceError, match="allow foreign"):
        apply_direction(FakePatcher(ConvUNet(4)), foreign_direction(4), 1.0, "percent", 0.0, 1.0, "cond", False)
    patched = apply_direction(FakePatcher(ConvUNet(4)), foreign_direction(4), 1.0, "percent", 0.0, 1.0, "cond", True)
    assert patched.patches["middle_block_after_patch"]


def test_windows_are_checked_at_validation():
    from nodes.registry import NODE_CLASS_MAPPINGS as nodes

    for name in ("HSpaceApplyDirection", "HSpaceStrengthSweep"):
        assert "start_percent <= end_percent" in nodes[name].VALIDATE_INPUTS(start_percent=0.8, end_percent=0.2)
        assert nodes[name].VALIDATE_INPUTS(start_percent=0.2, end_percent=0.8) is True
        assert nodes[name].VALIDATE_INPUTS(start_percent=None, end_percent=0.2) is True  # linked: known later
    assert "must not exceed" in nodes["HSpaceAsyrpSampler"].VALIDATE_INPUTS(t_edit=300, t_boost=400)
    validate = nodes["HSpaceSampleFromNoise"].validate_inputs  # ComfyUI passes a DynamicCombo's value nested
    assert "must not exceed" in validate(mode={"mode": "asymmetric", "t_edit": 3, "t_boost": 4}, cfg=1.0)
    assert validate(mode={"mode": "symmetric", "t_edit": 4, "t_boost": 3}) is True
    assert validate(mode={"mode": "ddim"}) is True and validate(mode=None) is True  # None: linked, known later


def test_a_solver_that_stopped_at_its_limit_is_reported_with_the_tolerance_it_reached(caplog):
    from types import SimpleNamespace

    assert _comfy.solver_report("the Jacobian SVD", SimpleNamespace(converged=True, iterations=3), 50) is None
    with caplog.at_level("WARNING", logger="hspace"):
        text = _comfy.solver_report("the pullback basis", SimpleNamespace(converged=False, iterations=50,
                                                                           tolerance=3.2e-3), 50)
    assert "did not converge after 50 iterations" in text and "0.0032" in text and "max_iter" in text
    assert [r.getMessage() for r in caplog.records] == [f"hspace: {text}"]
    # results without the iteration fields still report
    assert "at max_iter 7" in _comfy.solver_report("x", SimpleNamespace(converged=False), 7)


def test_small_images_are_enlarged_for_display_with_sharp_pixels():
    from nodes._display import enlarged, spectrum_chart

    digits = torch.rand(2, 16, 16, 3)
    shown = enlarged(digits)
    assert shown.shape == (2, 128, 128, 3)
    assert torch.equal(shown[:, ::8, ::8], digits) and torch.equal(shown[:, 7::8, 7::8], digits)
    large = torch.rand(1, 256, 200, 3)
    assert enlarged(large) is large
    chart = spectrum_chart([0.5, 0.25, 0.125])
    assert chart.shape == (1, 180, 400, 3) and 0 <= float(chart.min()) and float(chart.max()) <= 1
