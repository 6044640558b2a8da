"""Transformer hook sites on tiny random diffusers Flux, SD3 and DiT models: capture, Δh = 0, image tokens only,
fingerprints, PCA on a captured trajectory."""
import pytest
import torch

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.direction import Direction, check_fingerprint
from hspace_core.discovery.pca import pca_directions
from hspace_core.errors import HSpaceError
from hspace_core.samplers import sample_asyrp, sample_ddim
from hspace_core.schedule import FlowSchedule
from hspace_core.sites import HookSite
from hspace_core.transformer_denoisers import DiffusersTransformerDenoiser, pack_2x2, unpack_2x2

TEXT_TOKENS = 5


def tiny(family):
    from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, SD3Transformer2DModel

    torch.manual_seed(0)
    text = {"encoder_hidden_states": torch.randn(1, TEXT_TOKENS, 16), "pooled_projections": torch.randn(1, 8)}
    if family == "flux":
        model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                       attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                       pooled_projection_dim=8, guidance_embeds=False, axes_dims_rope=(2, 2, 4))
        return model.eval(), text, {"latent_size": (8, 8)}
    if family == "sd3":
        model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                      num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                      pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8)
        return model.eval(), text, {}
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=2,
                                  sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=4)
    return model.eval(), {"class_labels": torch.tensor([3])}, {}


MODELS = {family: tiny(family) for family in ("flux", "sd3", "dit")}
CASES = [("flux", "transformer_blocks.0.output"), ("flux", "transformer_blocks.0.attn.output"),
         ("flux", "single_transformer_blocks.0.output"), ("flux", "single_transformer_blocks.0.attn.output"),
         ("sd3", "transformer_blocks.0.output"), ("sd3", "transformer_blocks.1.attn.output"),
         ("dit", "transformer_blocks.0.output"), ("dit", "transformer_blocks.1.attn.output")]
SIGMAS = FlowSchedule(shift=3.0).sigmas(3)


def denoiser(family, site):
    model, cond, options = MODELS[family]
    return DiffusersTransformerDenoiser(model, site, cond, **options)


def direction(model, site, value=1.0, seed=0):
    torch.manual_seed(seed)
    return Direction(value * torch.randn(model.h_shape()), meta={"hook_site": site})


@pytest.mark.parametrize("family, site", CASES)
def test_capture_gives_image_tokens_per_step(family, site):
    model = denoiser(family, site)
    x = torch.randn(2, 4, 8, 8)
    controller = Bottleneck(capture=True)
    with model.attached(controller):
        sample_ddim(model, x, SIGMAS, disable=True)
    trajectory = controller.trajectory(meta={"hook_site": site})
    tokens, dim = 16, 16  # an 8x8 latent in 2x2 patches; every tiny model is 16 wide at the site
    assert model.h_shape() == (tokens, dim) and model.grid == (4, 4)
    assert tuple(trajectory.h.shape) == (2, 3, tokens, dim)
    assert torch.allclose(trajectory.timesteps, SIGMAS[:-1] * 1000)


@pytest.mark.parametrize("family, site", [CASES[0], CASES[3], CASES[4], CASES[7]])
@pytest.mark.parametrize("batched", [True, False])
def test_zero_shift_is_plain_sampling_bitwise_and_a_shift_changes_it(family, site, batched):
    model = denoiser(family, site)
    x = torch.randn(2, 4, 8, 8)
    plain = sample_ddim(model, x, SIGMAS, disable=True)
    with model.attached(Bottleneck([EditSpec(direction(model, site, 0.0))])):
        zero = sample_asyrp(model, x, SIGMAS, batched=batched, shifts=model.shifts, disable=True)
    assert torch.equal(zero, plain)
    with model.attached(Bottleneck([EditSpec(direction(model, site, 3.0))])):
        edited = sample_asyrp(model, x, SIGMAS, batched=batched, disable=True)
    assert (edited - plain).abs().max() > 1e-3


def watched(family, site):
    """(module, reader): a module after the site whose input holds the text and image tokens the site returned;
    reader splits that input into (text, image)."""
    model = MODELS[family][0]
    if site == "transformer_blocks.0.output":  # the next block's inputs: hidden_states (image) and text
        after = model.single_transformer_blocks[0] if family == "flux" else model.transformer_blocks[1]
        return after, lambda args, kwargs: (kwargs["encoder_hidden_states"], kwargs["hidden_states"])
    # Flux's single block: cat([attention output, mlp], dim=2) goes into proj_out, text tokens first
    return model.single_transformer_blocks[0].proj_out, lambda args, kwargs: (args[0][:, :TEXT_TOKENS],
                                                                              args[0][:, TEXT_TOKENS:])


@pytest.mark.parametrize("family, site", [("flux", "transformer_blocks.0.output"),
                                          ("flux", "single_transformer_blocks.0.attn.output"),
                                          ("sd3", "transformer_blocks.0.output")])
def test_a_shift_reaches_the_image_tokens_only(family, site):
    model = denoiser(family, site)
    module, read = watched(family, site)
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args, kwargs: seen.append(read(args, kwargs)),
                                              with_kwargs=True)
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([0.6])
    try:
        with torch.no_grad():
            model(x, sigma)
            with model.attached(Bottleneck([EditSpec(direction(model, site, 2.0))])):
                model(x, sigma)
    finally:
        handle.remove()
    (text_plain, image_plain), (text_edited, image_edited) = seen
    assert text_plain.shape[1] == TEXT_TOKENS and torch.equal(text_plain, text_edited)
    assert (image_edited - image_plain).abs().max() > 1e-2


def test_encode_and_decode_from_agree_with_the_full_call():
    model = denoiser("sd3", "transformer_blocks.0.output")
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.4])
    with torch.no_grad():
        h = model.encode(x, sigma)
        assert h.shape == (2, 16, 16)
        assert torch.allclose(model.decode_from(x, sigma, h), model.velocity(x, sigma), atol=1e-6)


def test_flux_packing_round_trips():
    x = torch.randn(2, 4, 8, 6)
    assert torch.equal(unpack_2x2(pack_2x2(x), 8, 6), x)


def test_fingerprint_names_the_site_and_refuses_a_direction_from_another():
    joint = denoiser("flux", "transformer_blocks.0.output")
    single = denoiser("flux", "single_transformer_blocks.0.output")
    fingerprint = joint.fingerprint()
    assert fingerprint["site"] == "transformer_blocks.0.output" and fingerprint["grid"] == [4, 4]
    made_here = direction(joint, "transformer_blocks.0.output")
    made_here.check_model(fingerprint)
    with pytest.raises(HSpaceError, match="hook site 'single_transformer_blocks.0.output'"):
        direction(single, "single_transformer_blocks.0.output").check_model(fingerprint, allow_foreign=True)
    with pytest.raises(HSpaceError, match="hook site 'mid_block.output'"):
        Direction(torch.zeros(16, 4, 4)).check_model(fingerprint)
    with pytest.raises(HSpaceError, match="hook site"):
        check_fingerprint(single.fingerprint(), fingerprint, "this trajectory", allow_foreign=True)
    with pytest.raises(HSpaceError, match="tokens,dim"):
        Direction(torch.zeros(16, 4, 4, 2), timesteps=[1, 2, 3, 4], meta={"hook_site": "transformer_blocks.0.output"})


def test_site_names_parse_and_bad_sites_are_refused():
    assert HookSite.parse("single_transformer_blocks.3.attn.output") == HookSite("attention",
                                                                                "single_transformer_blocks", 3)
    assert str(HookSite.parse("mid_block.output")) == "mid_block.output"
    with pytest.raises(HSpaceError, match="hook site"):
        HookSite.parse("transformer_blocks.x.output")
    with pytest.raises(HSpaceError, match="has 2 blocks"):
        denoiser("sd3", "transformer_blocks.5.output")
    with pytest.raises(HSpaceError, match="no middle block"):
        denoiser("dit", "mid_block.output")
    with pytest.raises(HSpaceError, match="missing"):
        DiffusersTransformerDenoiser(MODELS["sd3"][0], cond={"pooled_projections": torch.zeros(1, 8)})


def test_pca_of_a_captured_transformer_trajectory_gives_an_applicable_direction():
    site = "transformer_blocks.0.output"
    model = denoiser("dit", site)
    controller = Bottleneck(capture=True)
    with model.attached(controller):
        sample_ddim(model, torch.randn(6, 4, 8, 8), SIGMAS, disable=True)
    trajectory = controller.trajectory(meta={"hook_site": site})
    pca = pca_directions(trajectory, num_components=2)
    pc = pca.to_direction(0, trajectory.timesteps, meta={"hook_site": site, "fingerprint": model.fingerprint()})
    assert pc.per_timestep and pc.h_shape == (16, 16)
    pc.check_model(model.fingerprint())
    x = torch.randn(1, 4, 8, 8)
    with model.attached(Bottleneck([EditSpec(pc, 2.0)])):
        edited = sample_asyrp(model, x, SIGMAS, disable=True)
    assert (edited - sample_ddim(model, x, SIGMAS, disable=True)).abs().max() > 1e-3


def test_token_site_directions_and_trajectories_round_trip_through_files(tmp_path):
    from hspace_core.fileio import load_direction, load_trajectory, save_direction, save_trajectory

    site = "single_transformer_blocks.0.attn.output"
    model = denoiser("flux", site)
    controller = Bottleneck(capture=True)
    with model.attached(controller):
        sample_ddim(model, torch.randn(2, 4, 8, 8), SIGMAS, disable=True)
    trajectory = controller.trajectory(meta={"hook_site": site, "fingerprint": model.fingerprint()})
    loaded = load_trajectory(save_trajectory(trajectory, tmp_path / "t.safetensors"))
    assert torch.equal(loaded.h, trajectory.h) and loaded.meta["fingerprint"]["site"] == site
    per_step = Direction(trajectory.h[0], trajectory.timesteps.tolist(), {"hook_site": site})
    back = load_direction(save_direction(per_step, tmp_path / "d.safetensors"))
    assert back.per_timestep and back.h_shape == (16, 16) and back.meta["hook_site"] == site
    back.check_model(model.fingerprint())


@pytest.mark.parametrize("family, site", [("dit", "transformer_blocks.0.output"),
                                          ("flux", "single_transformer_blocks.0.attn.output")])
def test_jacobian_of_the_velocity_in_the_site_tokens(family, site):
    """Haas's Jacobian directions (d velocity / d image tokens at the site) through the existing discovery code:
    the leading singular values agree with the dense Jacobian's."""
    from hspace_core.discovery.jacobian import JacobianOperator, eps_of_h, trajectory_jacobian_directions

    model = denoiser(family, site)
    xs = torch.randn(1, 4, 8, 8)
    result = trajectory_jacobian_directions(model, xs, [0.8], num_vectors=2, seed=0, max_iter=200)
    assert result.right.shape == (1, 2, 16, 16)
    f, h0 = eps_of_h(model, xs[0], 0.8)
    dense = JacobianOperator(f, h0).dense()
    assert torch.allclose(result.singular_values[0], torch.linalg.svdvals(dense)[:2], rtol=1e-3)


def test_guidance_batches_uncond_and_cond_rows_and_edits_the_cond_rows():
    model, cond, _ = MODELS["dit"]
    site = "transformer_blocks.0.output"
    null = {"class_labels": torch.tensor([10])}
    plain = DiffusersTransformerDenoiser(model, site, cond)
    same = DiffusersTransformerDenoiser(model, site, cond, uncond=cond, cfg_scale=4.0)
    guided = DiffusersTransformerDenoiser(model, site, cond, uncond=null, cfg_scale=4.0)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.5])
    with torch.no_grad():
        assert torch.allclose(same.velocity(x, sigma), plain.velocity(x, sigma), atol=1e-5)
        controller = Bottleneck(capture=True)
        with guided.attached(controller):
            unedited = guided.velocity(x, sigma)
        assert controller.records[0].cond_or_uncond == (1, 0) and controller.records[0].h.shape[0] == 4
        assert controller.trajectory("cond").h.shape[0] == 2
        assert (unedited - plain.velocity(x, sigma)).abs().max() > 1e-3
        with guided.attached(Bottleneck([EditSpec(direction(guided, site, 2.0))], rows="uncond")):
            uncond_edit = guided.velocity(x, sigma)
        with guided.attached(Bottleneck([EditSpec(direction(guided, site, 2.0))], rows="cond")):
            cond_edit = guided.velocity(x, sigma)
    # v = v_u + s (v_c - v_u): an edit of the uncond rows enters with weight (1 - s), of the cond rows with s
    assert (uncond_edit - unedited).abs().max() > 1e-3 and (cond_edit - unedited).abs().max() > 1e-3
    assert not torch.allclose(uncond_edit, cond_edit)


def test_arithmetic_refuses_directions_of_two_sites():
    from hspace_core.arithmetic import add

    joint = Direction(torch.ones(16, 16), meta={"hook_site": "transformer_blocks.0.output"})
    single = Direction(torch.ones(16, 16), meta={"hook_site": "single_transformer_blocks.0.output"})
    assert torch.equal(add(joint, joint).delta, 2 * torch.ones(16, 16))
    assert add(joint, joint).meta["hook_site"] == "transformer_blocks.0.output"
    with pytest.raises(HSpaceError, match="different hook sites"):
        add(joint, single)
