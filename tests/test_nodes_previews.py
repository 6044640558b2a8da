"""Latent previews while the sampling nodes sample, in plain pytest: a stand-in for the few ComfyUI modules the
nodes use (``comfy.sample.sample_custom``, ``comfy.samplers.KSAMPLER``, ``latent_preview.prepare_callback``,
``comfy.utils.ProgressBar``), each doing what ComfyUI's does with the callback, over a tiny pixel UNet.

Every preview bar must be driven once per step, in order, with the bar's own step count: a node that stopped
passing the callback (no updates) or passed a fresh one per run (several short bars) fails.
"""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from hspace_core.schedule import VPSchedule, asyrp_timesteps
from nodes.pixel_model import DiffusersUNetWrapper
from nodes.registry import NODE_CLASS_MAPPINGS
from tiny import tiny_unet

STEPS = 3
SCHEDULE = VPSchedule.linear()


class _Bars:
    """Every ``comfy.utils.ProgressBar`` made: (total, updates as (value, total, has_preview))."""

    def __init__(self) -> None:
        self.made: list[SimpleNamespace] = []

    def previews(self) -> list[SimpleNamespace]:
        return [bar for bar in self.made if bar.preview]


def _fake_comfy(monkeypatch: pytest.MonkeyPatch) -> _Bars:
    bars = _Bars()

    class ProgressBar:
        def __init__(self, total: int, node_id: str | None = None, preview: bool = False):
            self.record = SimpleNamespace(total=total, updates=[], preview=preview)
            bars.made.append(self.record)

        def update_absolute(self, value: int, total: int | None = None, preview: object = None) -> None:
            self.record.updates.append((value, total, preview is not None))

        def update(self, value: int) -> None:
            self.record.updates.append((None, None, False))

    def prepare_callback(model, steps, x0_output_dict=None):  # latent_preview.prepare_callback's contract
        bar = ProgressBar(steps, preview=True)
        return lambda step, x0, x, total_steps: bar.update_absolute(step + 1, total_steps, b"jpeg")

    class KSAMPLER:
        def __init__(self, sampler_function, extra_options={}, inpaint_options={}):
            self.sampler_function, self.extra_options = sampler_function, extra_options

        def sample(self, model_k, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            total_steps = len(sigmas) - 1
            k_callback = None if callback is None else \
                (lambda x: callback(x["i"], x["denoised"], x["x"], total_steps))
            x = noise * sigmas[0] + latent_image
            return self.sampler_function(model_k, x, sigmas, extra_args=extra_args, callback=k_callback,
                                         disable=disable_pbar, **self.extra_options)

    def sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image, noise_mask=None,
                      callback=None, disable_pbar=False, seed=None):
        unet, ms = model.model.diffusion_model, model.model.model_sampling

        def model_k(x, sigma, model_options=None, **_):  # ComfyUI's denoiser: x0 from the UNet's eps, patches on
            options = {**(model_options or {}).get("transformer_options", {}), "sigmas": sigma,
                       "cond_or_uncond": [0]}
            scale = (1 + sigma.view(-1, 1, 1, 1) ** 2).rsqrt()
            eps = unet(x * scale, ms.timestep(sigma), transformer_options=options)
            return x - sigma.view(-1, 1, 1, 1) * eps

        extra_args = {"model_options": model.model_options, "seed": seed}
        return sampler.sample(model_k, sigmas.float(), extra_args, callback, noise, latent_image)

    class ModelSamplingDiscrete:
        pass

    class EPS:
        pass

    class V_PREDICTION(EPS):
        pass

    modules = {
        "comfy": {}, "comfy.model_patcher": {},
        "comfy.utils": {"ProgressBar": ProgressBar},
        "comfy.model_management": {"throw_exception_if_processing_interrupted": lambda: None,
                                   "load_models_gpu": lambda models: None},
        "comfy.samplers": {"KSAMPLER": KSAMPLER},
        "comfy.sample": {"sample_custom": sample_custom,
                         "prepare_noise": lambda samples, seed, batch_index=None: torch.randn(
                             samples.shape, generator=torch.Generator().manual_seed(seed)),
                         "fix_empty_latent_channels": lambda model, samples, downscale=None: samples},
        "comfy.model_sampling": {"ModelSamplingDiscrete": ModelSamplingDiscrete, "EPS": EPS,
                                 "V_PREDICTION": V_PREDICTION},
        "latent_preview": {"prepare_callback": prepare_callback},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)

    class Sampling(ModelSamplingDiscrete, EPS):  # the pixel DDPM's linear schedule
        sigmas = SCHEDULE.sigmas.float()

        def timestep(self, sigma):
            return SCHEDULE.timestep(sigma).float()

        def sigma(self, timestep):
            return SCHEDULE.sigma(timestep).float()

        def percent_to_sigma(self, percent: float) -> float:
            return 0.0 if percent >= 1 else float(SCHEDULE.sigma(999 * (1 - percent)))

    bars.sampling = Sampling()
    return bars


class _PixelPatcher:
    """A ModelPatcher over the pack's pixel-UNet wrapper: clone, set_model_patch, model_options."""

    def __init__(self, model: SimpleNamespace, model_options: dict):
        self.model, self.model_options, self.load_device = model, model_options, "cpu"

    def clone(self) -> "_PixelPatcher":
        options = dict(self.model_options)
        transformer_options = dict(options.get("transformer_options", {}))
        transformer_options["patches"] = {k: list(v) for k, v in transformer_options.get("patches", {}).items()}
        options["transformer_options"] = transformer_options
        return _PixelPatcher(self.model, options)

    def set_model_patch(self, patch, name: str) -> None:
        self.model_options.setdefault("transformer_options", {}).setdefault("patches", {}).setdefault(
            name, []).append(patch)

    def get_model_object(self, name: str):
        return getattr(self.model, name)


@pytest.fixture
def comfy(monkeypatch):
    bars = _fake_comfy(monkeypatch)
    bars.model = _PixelPatcher(SimpleNamespace(diffusion_model=DiffusersUNetWrapper(tiny_unet()),
                                               model_sampling=bars.sampling), {"transformer_options": {}})
    bars.sigmas = SCHEDULE.sigmas_for(asyrp_timesteps(STEPS + 1)[:-1]).float()  # STEPS steps, ending in 0
    return bars


def assert_one_preview_per_step(bars: _Bars, *steps: int) -> None:
    """One preview bar per sampling run of ``steps``, each updated at 1..N of N, with a preview each time."""
    previews = bars.previews()
    assert [bar.total for bar in previews] == list(steps)
    for bar in previews:
        assert bar.updates == [(i + 1, bar.total, True) for i in range(bar.total)]


def node(name: str):
    return NODE_CLASS_MAPPINGS[name]()


def _empty(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 3, 8, 8)}


def test_capture_h_previews_every_step_of_every_batch_on_one_bar(comfy):
    node("HSpaceCaptureH").capture(comfy.model, comfy.sigmas, _empty(2), 3, 0, 1.0, 0.0, "memory", "x")
    assert_one_preview_per_step(comfy, 2 * STEPS)  # 3 samples in batches of 2: two runs on one bar


@pytest.mark.parametrize("method", ["ddim", "edit_friendly"])
def test_invert_image_and_sample_from_noise_preview_every_step(comfy, method):
    image = {"samples": torch.rand(1, 3, 8, 8) * 2 - 1}
    record, _, _ = node("HSpaceInvertImage").execute(comfy.model, comfy.sigmas, image, method, 1.0, 0)
    inverted = STEPS - 1 if method == "ddim" else STEPS  # DDIM inversion has no inverse of the last step
    assert_one_preview_per_step(comfy, inverted)
    node("HSpaceSampleFromNoise").execute(comfy.model, record, "ddim", 1.0, 0)
    assert_one_preview_per_step(comfy, inverted, STEPS)


def test_strength_sweep_previews_every_step_of_every_column_on_one_bar(comfy):
    from hspace_core.direction import Direction

    direction = [Direction(torch.ones(16, 4, 4))]
    node("HSpaceStrengthSweep").sweep(comfy.model, direction, comfy.sigmas, _empty(), 0, 1.0, -1.0, 1.0, 2,
                                      "direction", 0.0, 1.0, "both", True)
    assert_one_preview_per_step(comfy, 2 * STEPS)


def test_jacobian_directions_preview_the_run_they_differentiate_along(comfy):
    node("HSpaceJacobianDirections").discover(comfy.model, comfy.sigmas, _empty(), 0, 1, 0, "subspace", 2)
    assert_one_preview_per_step(comfy, STEPS)


def test_pullback_edit_previews_the_unedited_run_and_the_finish(comfy):
    t_edit = asyrp_timesteps(STEPS + 1)[1]  # the second step: the finish runs the last STEPS - 1 steps
    node("HSpacePullbackEdit").edit(comfy.model, comfy.sigmas, _empty(), 0, t_edit, 1, 0, "+", 0.1, 1, 0, 2)
    assert_one_preview_per_step(comfy, STEPS, STEPS - 1)


# -- the original beside the edit, on the node's preview only --------------------------------------------------
def _shown(monkeypatch) -> list:
    from nodes import _comfy

    shown: list = []
    monkeypatch.setattr(_comfy, "preview_images", lambda images: shown.append(images) or ["saved"])
    return shown


def test_sample_from_noise_shows_the_inverted_image_beside_the_result(comfy, monkeypatch):
    from nodes._display import enlarged
    from nodes.pixel_latents import latent_to_image

    shown = _shown(monkeypatch)
    image = {"samples": torch.rand(2, 3, 8, 8) * 2 - 1}
    record, _, _ = node("HSpaceInvertImage").execute(comfy.model, comfy.sigmas, image, "edit_friendly", 1.0, 0)
    out = node("HSpaceSampleFromNoise").execute(comfy.model, record, "ddim", 1.0, 0)
    (samples,) = out["result"]
    assert out["ui"]["images"] == ["saved"] and samples["samples"].shape == (2, 3, 8, 8)  # the LATENT as sampled
    (preview,) = shown
    assert preview.shape == (2, 128, 2 * 128 + 4, 3)  # enlarged 16x, original left, a 4 px gap, result right
    torch.testing.assert_close(preview[:, :, :128], enlarged(latent_to_image(image["samples"])))
    torch.testing.assert_close(preview[:, :, -128:], enlarged(latent_to_image(samples["samples"])))


def test_pullback_edit_shows_the_unedited_run_beside_the_edit(comfy, monkeypatch):
    from nodes._display import enlarged
    from nodes.pixel_latents import latent_to_image

    shown = _shown(monkeypatch)
    t_edit = asyrp_timesteps(STEPS + 1)[1]
    out = node("HSpacePullbackEdit").edit(comfy.model, comfy.sigmas, _empty(), 0, t_edit, 1, 0, "+", 0.5, 1, 0, 2)
    edited = out["result"][0]["samples"]
    (preview,) = shown
    assert preview.shape == (1, 128, 260, 3)
    torch.testing.assert_close(preview[:, :, -128:], enlarged(latent_to_image(edited)))
    assert (preview[:, :, :128] - preview[:, :, -128:]).abs().max() > 0  # the unedited run differs from the edit


def test_previews_of_latent_models_are_left_to_a_vae_decode(monkeypatch):
    from nodes import _sampling
    from test_nodes import FakePatcher

    shown = _shown(monkeypatch)
    assert _sampling.pixel_preview(FakePatcher(), torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)) == []
    assert shown == []
