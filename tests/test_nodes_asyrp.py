"""Asyrp Train's f_t file and Apply Asyrp f_t, without ComfyUI: the training runs on a tiny UNet with a tiny CLIP,
the MODEL is a stand-in holding the pack's diffusers wrapper."""
from types import SimpleNamespace

import pytest
import torch

from hspace_core.bottleneck import Bottleneck
from hspace_core.discovery.asyrp import unet_time_embedding
from hspace_core.schedule import asyrp_timesteps
from nodes import _folders, asyrp_train
from hspace_core.direction import Inversion
from hspace_core.errors import HSpaceError
from nodes.pixel_model import DiffusersUNetWrapper
from tests.test_discovery_asyrp import _tiny_clip
from tests.tiny import tiny_denoiser

torch.set_num_threads(1)


def _fake_model(unet):
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=DiffusersUNetWrapper(unet)))


def _patch_training(monkeypatch, den):
    monkeypatch.setattr(asyrp_train, "autograd_denoiser", lambda model: den)
    monkeypatch.setattr(asyrp_train, "load_clip", lambda name: _tiny_clip())
    monkeypatch.setattr(asyrp_train.comfy_adapter, "timestep_to_sigma", lambda m, t: den.schedule.sigma(float(t)))
    monkeypatch.setattr(asyrp_train.comfy_adapter, "progress_callback", lambda total, node_id=None: None)
    monkeypatch.setattr(asyrp_train.comfy_adapter, "model_sampling",
                        lambda m: SimpleNamespace(sigmas=torch.zeros(den.schedule.num_train_timesteps)))


def test_connected_images_are_the_clip_source_as_in_asyrps_code(monkeypatch):
    den = tiny_denoiser()
    _patch_training(monkeypatch, den)
    seen = {}
    original = asyrp_train.train_delta_block

    def spy(*args, **kwargs):
        seen["images"], seen["source"] = args[6] if len(args) > 6 else kwargs.get("images"), kwargs["source"]
        return original(*args, **kwargs)

    monkeypatch.setattr(asyrp_train, "train_delta_block", spy)
    sigmas = den.schedule.sigmas_for(asyrp_timesteps(3)).float()
    noise = Inversion(torch.randn(2, 3, 8, 8) * float(sigmas[0]), sigmas, None, 0.0, method="ddim")
    images = torch.rand(2, 8, 8, 3)
    node = asyrp_train.HSpaceAsyrpTrain()
    directions, _ = node.train(_fake_model(den.unet), noise, "a", "b", "tiny", 500, 1, 0.5, 3.0, False, images=images)
    assert seen["source"] == "image" and directions[0].meta["source"] == "image"
    torch.testing.assert_close(seen["images"], images.movedim(-1, 1) * 2 - 1)
    node.train(_fake_model(den.unet), noise, "a", "b", "tiny", 500, 1, 0.5, 3.0, False)
    assert seen["source"] == "reference" and seen["images"] is None
    with pytest.raises(HSpaceError, match="do not match the noise record"):
        node.train(_fake_model(den.unet), noise, "a", "b", "tiny", 500, 1, 0.5, 3.0, False, images=images[:1])


def test_trained_f_t_is_saved_with_its_settings_and_applied_per_sample(tmp_path, monkeypatch):
    monkeypatch.setenv(_folders.ENV_VAR, str(tmp_path))
    den = tiny_denoiser()
    model = _fake_model(den.unet)
    _patch_training(monkeypatch, den)
    monkeypatch.setattr(asyrp_train.comfy_adapter, "vp_schedule", lambda m: den.schedule)
    patched = {}
    monkeypatch.setattr(asyrp_train.comfy_adapter, "patch_model",
                        lambda m, controller: patched.setdefault("controller", controller) and m)
    sigmas = den.schedule.sigmas_for(asyrp_timesteps(4)).float()
    noise = Inversion(torch.randn(2, 3, 8, 8) * float(sigmas[0]), sigmas, None, 0.0, method="ddim")
    node = asyrp_train.HSpaceAsyrpTrain()
    directions, log = node.train(model, noise, "face", "smiling face", "tiny", 500, 1, 0.5, 3.0, False,
                                 save_f_t_as="smile")
    assert "f_t saved as smile.safetensors" in log
    assert directions[0].meta["target_text"] == "smiling face" and directions[0].meta["t_edit"] == 500
    assert "smile.safetensors" in _folders.list_names()

    model_out, info = asyrp_train.HSpaceApplyAsyrpFunction().apply(model, "smile.safetensors", 2.0, -1, False)
    controller = patched["controller"]
    assert isinstance(controller, Bottleneck) and controller.window == (500.0, 999.0) and "t >= 500" in info
    h = torch.randn(2, 16, 4, 4)
    function = controller.functions[0].function
    with torch.no_grad():
        expected = h + 2.0 * function.block(h, unet_time_embedding(den.unet, torch.tensor([700.0, 700.0])))
    torch.testing.assert_close(controller(h, 700.0), expected)  # each sample's own f_t(h)
    n_train = len(sigmas) - 1
    torch.testing.assert_close(controller(h, 700.0, flags={"steps": 2 * n_train, "asymmetric": True}),
                               h + 0.5 * (expected - h))  # Asyrp's N_train / N_test
    assert torch.equal(controller(h, 300.0), h)  # below the trained t_edit: no edit
