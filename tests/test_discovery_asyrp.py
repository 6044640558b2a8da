"""Asyrp's f_t, CLIP loss, training loop and interval selection (ALGORITHMS.md §1.4-1.7; tests 11-13)."""
import math
import zlib

import pytest
import torch

from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.direction import Direction
from hspace_core.discovery.asyrp import (IMAGENET_TEMPLATES, DeltaBlock, DirectionalCLIPLoss, clip_encoders,
                                         editing_curves, global_delta_h, pixel_rms_distance, select_t_boost,
                                         select_t_edit, train_delta_block, unet_time_embedding)
from hspace_core.errors import HSpaceError
from hspace_core.schedule import asyrp_timesteps, inversion_sigmas
from tests.tiny import tiny_denoiser

torch.set_num_threads(1)

VOCAB = 64


def _tokenize(texts):
    """A stand-in tokenizer: words hashed into a tiny vocabulary, BOS ... EOS, padded with 0."""
    rows = [[VOCAB - 2] + [1 + zlib.crc32(w.encode()) % (VOCAB - 3) for w in t.split()][:12] + [VOCAB - 1]
            for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _tiny_clip():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, eos_token_id=VOCAB - 1,
                         bos_token_id=VOCAB - 2, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8)
    return clip_encoders(transformers.CLIPModel(config), _tokenize)


def test_templates_are_the_79_imagenet_ones():
    assert len(IMAGENET_TEMPLATES) == 79 == len(set(IMAGENET_TEMPLATES))
    assert all("{}" in t for t in IMAGENET_TEMPLATES)
    assert "a photo of many {}." not in IMAGENET_TEMPLATES


def test_delta_block_parameter_count_shape_and_time_dependence():
    assert sum(p.numel() for p in DeltaBlock(512, 512).parameters()) == 3 * 512 ** 2 + 5 * 512 == 788_992
    block = DeltaBlock(16, 32, num_groups=4)
    h = torch.randn(2, 16, 4, 4)
    temb = torch.randn(2, 32)
    out = block(h, temb)
    assert out.shape == h.shape and out.abs().sum() > 0  # not zero-initialised
    torch.testing.assert_close(block(h, temb), out)  # t enters only through temb
    assert not torch.allclose(block(h, temb + 1), out)
    with pytest.raises(HSpaceError, match="divisible"):
        DeltaBlock(12, 8)
    with pytest.raises(HSpaceError, match=r"\[B, 16, H, W\]"):
        block(torch.randn(2, 8, 4, 4), temb)


def test_block_for_unet_and_time_embedding():
    den = tiny_denoiser()
    block = DeltaBlock.for_unet(den.unet)
    assert block.conv_in.in_channels == 16 and block.temb_proj.in_features == 32 and block.norm.num_groups == 4
    temb = unet_time_embedding(den.unet, torch.tensor([10.0, 900.0]))
    assert temb.shape == (2, 32) and not temb.requires_grad
    expected = den.unet.time_embedding(den.unet.time_proj(torch.tensor([10.0, 900.0])))
    torch.testing.assert_close(temb, expected)


def test_directional_clip_loss_is_the_directional_cosine_of_the_features():
    encode_image, encode_text = _tiny_clip()
    templates = ("a photo of a {}.", "a drawing of the {}.", "art of a {}.")
    loss = DirectionalCLIPLoss(encode_image, encode_text, "face", "smiling face", templates=templates)
    torch.manual_seed(3)
    source = torch.rand(3, 3, 8, 8) * 2 - 1
    edited = source + 0.3 * torch.randn_like(source)

    # StyleGAN-NADA's direction, computed here from the raw encoders, one image at a time
    def unit(v):
        return v / v.norm(dim=-1, keepdim=True)

    with torch.no_grad():
        differences = (unit(encode_text([t.format("smiling face") for t in templates]))
                       - unit(encode_text([t.format("face") for t in templates])))
        text_direction = unit(differences.mean(0))
        cosines = torch.stack([unit(unit(encode_image(e[None])[0]) - unit(encode_image(s[None])[0])) @ text_direction
                               for e, s in zip(edited, source)])
        raw = encode_text(["face", "smiling face"])
    expected = -torch.log((1 + cosines) / 2).mean()
    torch.testing.assert_close(loss(edited, source), expected, rtol=1e-5, atol=1e-6)
    for i in range(3):  # per image, the loss inverts to its cosine: cos = 2 exp(-L) - 1
        torch.testing.assert_close(2 * torch.exp(-loss(edited[i:i + 1], source[i:i + 1])) - 1, cosines[i],
                                   rtol=1e-5, atol=1e-6)
    assert loss.text_cosine == pytest.approx(float(unit(raw[0]) @ unit(raw[1])), abs=1e-6)
    gray = loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))  # one channel is repeated to RGB
    assert torch.isfinite(gray)


def _training_setup():
    den = tiny_denoiser()
    torch.manual_seed(1)
    block = DeltaBlock.for_unet(den.unet)
    sigmas = den.schedule.sigmas_for(asyrp_timesteps(4)).float()
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    x_start = torch.randn(2, 3, 8, 8) * float(sigmas[0])
    clip = DirectionalCLIPLoss(*_tiny_clip(), "face", "smiling face")
    return den, block, sigmas, images, x_start, clip


class _Spy:
    """Wraps a denoiser and records whether the x reaching the UNet carries a graph."""

    def __init__(self, inner):
        self.inner, self.x_requires_grad = inner, []
        self.schedule, self.unet = inner.schedule, inner.unet

    def encode(self, x, sigma):
        self.x_requires_grad.append(x.requires_grad)
        return self.inner.encode(x, sigma)

    def decode_from(self, x, sigma, h):
        self.x_requires_grad.append(x.requires_grad)
        return self.inner.decode_from(x, sigma, h)

    def eps(self, x, sigma):
        self.x_requires_grad.append(x.requires_grad)
        return self.inner.eps(x, sigma)


def test_training_steps_are_isolated_and_one_per_edited_timestep():
    den, block, sigmas, images, x_start, clip = _training_setup()
    spy = _Spy(den)
    sigma_edit = float(sigmas[2])  # steps 0, 1, 2 of 4 are edited
    before = {k: v.clone() for k, v in den.unet.state_dict().items()}
    history = train_delta_block(spy, block, x_start, sigmas, sigma_edit, clip, images=images, epochs=2)
    assert len(history) == 2 * 2 * 3
    assert [r["step"] for r in history[:3]] == [0, 1, 2]
    assert not any(spy.x_requires_grad)
    assert all(torch.equal(before[k], v) for k, v in den.unet.state_dict().items())
    assert all(p.grad is None for p in den.unet.parameters())
    assert all(p.requires_grad for p in den.unet.parameters())  # the caller's flags are restored
    assert any(p.grad is not None for p in block.parameters())


def test_one_training_step_lowers_the_loss():
    den, block, _, images, _, clip = _training_setup()
    sigmas = den.schedule.sigmas_for([400, 200, 0]).float()  # at t = 999 P_t amplifies eps 157-fold
    sigma_edit = float(sigmas[0])  # only the first step is edited: one optimizer step per image
    x, image = torch.randn(1, 3, 8, 8) * float(sigmas[0]), images[:1]
    sigma = float(sigmas[0])
    temb = unet_time_embedding(den.unet, den.schedule.timestep(sigmas[:1]))

    def loss_now():
        with torch.no_grad():
            h = den.encode(x, sigma)
            x0_edit = x - sigma * den.decode_from(x, sigma, h + block(h, temb))
            x0_orig = x - sigma * den.eps(x, sigma)
            return float(clip(x0_edit, image) + 3.0 * clip.text_cosine * (x0_edit - x0_orig).abs().mean())

    start = loss_now()
    history = train_delta_block(den, block, x, sigmas, sigma_edit, clip, images=image, lr=0.5)
    assert len(history) == 1 and abs(history[0]["loss"] - start) < 1e-4
    assert loss_now() < start


def test_training_callback_can_stop_and_reference_source():
    den, block, sigmas, images, x_start, clip = _training_setup()

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    with pytest.raises(Stop):
        train_delta_block(den, block, x_start, sigmas, float(sigmas[1]), clip, images=images, callback=stop)
    history = train_delta_block(den, block, x_start[:1], sigmas, float(sigmas[1]), clip, source="reference")
    assert len(history) == 2
    with pytest.raises(HSpaceError, match="input images"):
        train_delta_block(den, block, x_start, sigmas, float(sigmas[1]), clip)
    with pytest.raises(HSpaceError, match="edit window"):
        train_delta_block(den, block, x_start, sigmas, 1e9, clip, images=images)


def test_global_delta_h_averages_over_images_and_steps():
    den, block, sigmas, _, x_start, _ = _training_setup()
    per_t = global_delta_h(den, block, x_start, sigmas, float(sigmas[1]), per_timestep=True)
    assert isinstance(per_t, Direction) and per_t.delta.shape == (2, 16, 4, 4) and len(per_t.timesteps) == 2
    glob = global_delta_h(den, block, x_start, sigmas, float(sigmas[1]))
    assert glob.delta.shape == (16, 4, 4) and glob.meta["method"] == "asyrp"
    torch.testing.assert_close(glob.delta, per_t.delta.mean(0))
    one = global_delta_h(den, block, x_start[:1], sigmas, float(sigmas[0]), per_timestep=True)
    h = den.encode(x_start[:1], float(sigmas[0]))
    temb = unet_time_embedding(den.unet, den.schedule.timestep(sigmas[:1]))
    with torch.no_grad():
        torch.testing.assert_close(one.delta[0], block(h, temb)[0])


def test_select_t_edit_and_t_boost_on_synthetic_curves():
    t = torch.arange(1000.0)
    celeba_p = 0.33 + (t - 538) * 1e-3
    celeba_x = 1.2 + (t - 167) * 1e-3
    assert select_t_edit((t, celeba_p), 1.0) == 538
    assert select_t_boost((t, celeba_x)) == 167
    assert select_t_edit((t.flip(0), celeba_p.flip(0)), 1.0) == 538  # any order
    assert select_t_edit((t, celeba_p), 0.9) == 505  # lower cosine -> lower threshold -> smaller t_edit
    bumpy = {0: 0.0, 10: 0.5, 20: 0.1, 30: 0.2, 40: 0.6}
    assert select_t_edit(bumpy, 1.0, base=0.4) == 10  # first crossing from t = 0 upward
    assert select_t_boost({0: 0.0, 5: 1.2, 9: 2.0}) == 5  # a tie counts as a crossing
    with pytest.raises(HSpaceError, match="never reaches"):
        select_t_boost({0: 0.1, 1: 0.2})
    with pytest.raises(HSpaceError, match="empty"):
        select_t_edit({}, 1.0)


def test_editing_curves_on_tiny_unet():
    den = tiny_denoiser()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    sigmas = inversion_sigmas(den.schedule.sigmas_for(asyrp_timesteps(6)))
    curves = editing_curves(den, images, sigmas, batch_size=2)
    assert curves.timesteps.shape == curves.x0_distance.shape == curves.xt_distance.shape == (5,)
    assert torch.all(curves.timesteps[1:] > curves.timesteps[:-1])
    assert torch.isfinite(curves.x0_distance).all() and torch.isfinite(curves.xt_distance_std).all()
    first = pixel_rms_distance(images / (1 + float(sigmas[0]) ** 2) ** 0.5, images).mean()
    torch.testing.assert_close(curves.xt_distance[0], first)  # the image is x at the first sigma
    calls = []
    custom = editing_curves(den, images[:1], sigmas, distance=lambda a, b: (a - b).abs().flatten(1).amax(1),
                            callback=calls.append)
    assert calls == [{"batch": 0, "batches": 1}] and custom.x0_distance.shape == (5,)
    assert isinstance(custom.t_boost(thr=0.0), float)


# -- device and dtype follow the model (item 4) ---------------------------------------------------------------
def test_block_follows_the_models_device_and_dtype():
    from tests.tiny import tiny_unet

    assert DeltaBlock.for_unet(tiny_unet().double()).conv_in.weight.dtype == torch.float64
    assert DeltaBlock.for_unet(tiny_unet().to("meta")).conv_in.weight.device.type == "meta"
    den, block, sigmas, images, x_start, clip = _training_setup()
    den64 = DiffusersDenoiser(den.unet.double(), den.schedule)
    history = train_delta_block(den64, block, x_start, sigmas, float(sigmas[1]), clip, images=images)
    assert all(p.dtype == torch.float64 for p in block.parameters()) and math.isfinite(history[-1]["loss"])
    direction = global_delta_h(den64, block, x_start, sigmas, float(sigmas[1]))
    assert direction.delta.device.type == "cpu" and torch.isfinite(direction.delta).all()


# -- f_t per image at inference (item 5) ------------------------------------------------------------------------
def test_function_edit_shifts_each_sample_by_its_own_f_of_h_inside_the_window():
    from hspace_core.bottleneck import Bottleneck, FunctionEdit

    controller = Bottleneck(window=(500, 999), functions=[FunctionEdit(lambda h, t: h ** 2 + t, 0.5)])
    h = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(controller(h, 600.0), h + 0.5 * (h ** 2 + 600.0))
    assert torch.equal(controller(h, 400.0), h)
    split = controller(torch.cat([h[:2], h[:2]]), 600.0, flags={"split": True})  # [unshifted; shifted]
    torch.testing.assert_close(split, torch.cat([h[:2], h[:2] + 0.5 * (h[:2] ** 2 + 600.0)]))


def test_f_t_file_round_trips_follows_the_model_and_refuses_others(tmp_path):
    from hspace_core.discovery.asyrp import load_delta_block, save_delta_block
    from tests.tiny import tiny_unet

    den, block, _, _, _, _ = _training_setup()
    meta = {"fingerprint": den.fingerprint(), "source_text": "face", "target_text": "smiling face",
            "edit_window": [500.0, 999], "n_train_steps": 4}
    path = save_delta_block(block, tmp_path / "smile.safetensors", meta)
    loaded, read = load_delta_block(path, den.unet, den.fingerprint())
    assert read["target_text"] == "smiling face" and read["edit_window"] == [500.0, 999]
    h, temb = torch.randn(2, 16, 4, 4), torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(h, temb), block(h, temb))
    assert load_delta_block(path, tiny_unet().double())[0].conv_in.weight.dtype == torch.float64
    assert load_delta_block(path, tiny_unet().to("meta"))[0].conv_in.weight.device.type == "meta"
    other = tiny_denoiser(seed=3).fingerprint()
    with pytest.raises(HSpaceError, match="another model"):
        load_delta_block(path, den.unet, other)
    with pytest.raises(HSpaceError, match="not an hspace asyrp_f_t file"):
        from hspace_core.fileio import save_direction

        load_delta_block(save_direction(Direction(torch.zeros(16, 4, 4)), tmp_path / "d.safetensors"), den.unet)


def test_sampling_with_f_t_is_per_sample_and_differs_from_the_global_mean():
    from hspace_core.discovery.asyrp import sample_with_f_t
    from hspace_core.samplers import sample_asyrp, sample_ddim

    den, block, sigmas, _, x_start, _ = _training_setup()
    sigma_edit = float(sigmas[1])
    both = sample_with_f_t(den, block, x_start, sigmas, sigma_edit)
    alone = torch.cat([sample_with_f_t(den, block, x_start[i:i + 1], sigmas, sigma_edit) for i in range(2)])
    torch.testing.assert_close(both, alone, atol=2e-4, rtol=1e-4)  # each sample is edited by its own f_t(h)
    plain = sample_ddim(den, x_start, sigmas, disable=True)
    assert (both - plain).abs().max() > 1e-3
    with torch.no_grad():
        block.conv_out.weight.zero_()
        block.conv_out.bias.zero_()
    torch.testing.assert_close(sample_with_f_t(den, block, x_start, sigmas, sigma_edit),
                               sample_asyrp(den, x_start, sigmas, sigma_edit=sigma_edit, disable=True))
