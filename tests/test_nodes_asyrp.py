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


def test_the_inverted_images_are_the_clip_source_as_in_asyrps_code(monkeypatch):
    den = tiny_denoiser()
    _patch_training(monkeypatch, den)
    seen = {}
    original = asyrp_train.train_delta_block

    def spy(*args, **kwargs):
        seen["images"], seen["source"] = args[6] if len(args) > 6 else kwargs.get("images"), kwargs["source"]
        return original(*args, **kwargs)

    monkeypatch.setattr(asyrp_train, "train_delta_block", spy)
    sigmas = den.schedule.sigmas_for(asyrp_timesteps(3)).float()
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = Inversion(torch.randn(2, 3, 8, 8) * float(sigmas[0]), sigmas, None, 0.0, method="ddim", source=images)
    node = asyrp_train.HSpaceAsyrpTrain()
    directions, _ = node.train(_fake_model(den.unet), noise, "a", "b", "tiny", 500, 1, 0.5, 3.0, False)
    assert seen["source"] == "image" and directions[0].meta["source"] == "image"
    torch.testing.assert_close(seen["images"], images)
    without_images = Inversion(noise.x_T, sigmas, None, 0.0, method="ddim")
    node.train(_fake_model(den.unet), without_images, "a", "b", "tiny", 500, 1, 0.5, 3.0, False)
    assert seen["source"] == "reference" and seen["images"] is None
    wrong = Inversion(noise.x_T, sigmas, None, 0.0, method="ddim", source=images[:1])
    with pytest.raises(HSpaceError, match="do not match its x_T"):
        node.train(_fake_model(den.unet), wrong, "a", "b", "tiny", 500, 1, 0.5, 3.0, False)


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


# -- ComfyUI's CLIP_VISION + CLIP as Asyrp's CLIP ---------------------------------------------------------------
def _clip_vision(projection_dim: int = 8, model_type: str = "clip_vision_model"):
    """ClipVisionModel's config and get_sd (transformers key names) of a tiny random CLIP vision tower."""
    transformers = pytest.importorskip("transformers")
    config = {"model_type": model_type, "projection_dim": projection_dim, "image_size": 16, "patch_size": 8,
              "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(1)
    with torch.inference_mode():  # ComfyUI's loaders run in inference mode: the weights are inference tensors
        model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
            **{k: v for k, v in config.items() if k != "model_type"}))
        weights = {k: v.clone() for k, v in model.state_dict().items()}
    return SimpleNamespace(config=config, get_sd=lambda: weights)


class _Clip:
    """comfy.sd.CLIP's tokenize / encode_from_tokens (hashed words, summed) over an SD1ClipModel-like holder."""

    def __init__(self, projection: torch.Tensor | None, hidden: int = 6):
        torch.manual_seed(2)
        self.table = torch.randn(97, hidden)
        transformer = SimpleNamespace()
        if projection is not None:
            transformer.text_projection = SimpleNamespace(weight=projection)
        self.cond_stage_model = SimpleNamespace(clip="clip_l", clip_l=SimpleNamespace(transformer=transformer))

    def tokenize(self, text: str) -> list[int]:
        return [sum(map(ord, word)) % 97 for word in text.split()]

    def encode_from_tokens(self, tokens, return_pooled=False):
        assert return_pooled == "unprojected"
        return None, self.table[tokens].sum(0, keepdim=True)


def test_comfy_clip_vision_and_clip_give_a_differentiable_clip_loss():
    from hspace_core.discovery.asyrp import DirectionalCLIPLoss

    projection = torch.randn(8, 6)
    clip = _Clip(projection)
    encode_image, encode_text = asyrp_train.comfy_clip_encoders(_clip_vision(), clip)
    torch.testing.assert_close(encode_text(["a bold digit"]), clip.encode_from_tokens([
        *clip.tokenize("a bold digit")], "unprojected")[1] @ projection.T)
    loss = DirectionalCLIPLoss(encode_image, encode_text, "digit", "bold digit", templates=("a {}.", "the {}."))
    edited = (torch.rand(2, 1, 16, 16) * 2 - 1).requires_grad_()
    loss(edited, torch.zeros(2, 1, 16, 16)).backward()  # through the inference-mode weights' normal copy
    assert edited.grad is not None and edited.grad.abs().sum() > 0


def test_comfy_clip_of_other_spaces_is_refused_naming_the_files():
    def refused(clip_vision, clip, match):
        with pytest.raises(HSpaceError, match=match) as error:
            asyrp_train.comfy_clip_encoders(clip_vision, clip)
        assert "models/clip_vision/" in str(error.value) and "models/text_encoders/" in str(error.value)

    refused(_clip_vision(8), _Clip(torch.randn(6, 6)), "gives 6 dims but the CLIP_VISION's image embedding has 8")
    refused(_clip_vision(8), _Clip(None), "no CLIP text model with a text_projection")
    refused(_clip_vision(8), _Clip(torch.zeros(8, 6)), "holds no trained weights")
    refused(_clip_vision(8, "dinov2"), _Clip(torch.randn(8, 6)), "dinov2 without CLIP's visual projection")
    partial = _clip_vision(8)
    weights = {k: v for k, v in partial.get_sd().items() if "layer_norm1" not in k}
    refused(SimpleNamespace(config=partial.config, get_sd=lambda: weights), _Clip(torch.randn(8, 6)),
            "lacks 2 weights of a CLIP vision tower")


def test_asyrp_train_uses_comfy_clip_when_connected_and_wants_both(tmp_path, monkeypatch):
    monkeypatch.setenv(_folders.ENV_VAR, str(tmp_path))
    den = tiny_denoiser()
    monkeypatch.setattr(asyrp_train, "autograd_denoiser", lambda model: den)
    monkeypatch.setattr(asyrp_train, "load_clip", lambda name: pytest.fail("the transformers CLIP was loaded"))
    monkeypatch.setattr(asyrp_train.comfy_adapter, "timestep_to_sigma", lambda m, t: den.schedule.sigma(float(t)))
    monkeypatch.setattr(asyrp_train.comfy_adapter, "progress_callback", lambda total, node_id=None: None)
    monkeypatch.setattr(asyrp_train.comfy_adapter, "model_sampling",
                        lambda m: SimpleNamespace(sigmas=torch.zeros(den.schedule.num_train_timesteps)))
    sigmas = den.schedule.sigmas_for(asyrp_timesteps(3)).float()
    noise = Inversion(torch.randn(1, 3, 8, 8) * float(sigmas[0]), sigmas, None, 0.0, method="ddim")
    node = asyrp_train.HSpaceAsyrpTrain()
    args = (_fake_model(den.unet), noise, "digit", "bold digit", "unused", 500, 1, 0.5, 3.0, False)
    directions, log = node.train(*args, clip_vision=_clip_vision(), clip=_Clip(torch.randn(8, 6)))
    assert directions[0].meta["clip_model"] == "ComfyUI CLIP_VISION + CLIP" and "steps, loss" in log
    with pytest.raises(HSpaceError, match="go together"):
        node.train(*args, clip_vision=_clip_vision())
