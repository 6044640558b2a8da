"""The pack's DiT wrapper (nodes/pixel_model.py) in plain pytest, on a tiny random diffusers DiT: it computes what the
library's denoiser computes, its blocks take ComfyUI's ``patches_replace["dit"]`` replacements the way Flux's and
MMDiT's forwards give them, and the adapter, the fingerprint and the nodes treat it as a transformer family.

The same code runs in a real ComfyUI on the embedded DiT in tests/comfyui/test_dit_comfyui.py.
"""
from __future__ import annotations

import pytest
import torch
from test_comfy_transformer import FakePatcher, Recorder
from tiny import tiny_dit

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.direction import Direction
from hspace_core.errors import HSpaceError
from hspace_core.transformer_denoisers import DiffusersTransformerDenoiser
from nodes import _denoisers, _sampling, apply, comfy_adapter, pixel_model, pixel_nodes

SIZE, LAYERS, TOKENS, DIM = 8, 4, 16, 16  # 8x8 pixels in 2x2 patches: 16 tokens of width 2 heads x 8


class FlowSampling:
    """Stands in for ComfyUI's ModelSamplingDiscreteFlow with CONST (shift 1, multiplier 1000)."""

    sigmas = torch.arange(1, 1001, dtype=torch.float32) / 1000

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma) * 1000

    def percent_to_sigma(self, percent: float) -> float:
        return 1.0 - percent


CONST = type("CONST", (), {})
Sampling = type("ModelSampling", (FlowSampling, CONST), {})


class PixelFlowDiT:
    """Named like the loader's BaseModel (the family is the class name)."""

    def __init__(self, inner: torch.nn.Module):
        self.diffusion_model = inner
        self.model_sampling = Sampling()


def dit_model(seed: int = 0) -> FakePatcher:
    return FakePatcher(PixelFlowDiT(pixel_model.DiffusersDiTWrapper(tiny_dit(seed, size=SIZE, num_layers=LAYERS))))


def call(model: FakePatcher, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The wrapper called the way BaseModel._apply_model calls a diffusion model: timesteps 1000 sigma."""
    options = {**model.model_options["transformer_options"], "sigmas": torch.full((x.shape[0],), sigma),
               "cond_or_uncond": [0]}
    with torch.no_grad():
        return comfy_adapter.diffusion_model(model)(x, torch.full((x.shape[0],), 1000 * sigma),
                                                    transformer_options=options)


def test_the_wrapper_is_the_librarys_velocity_at_the_null_class():
    model = dit_model()
    wrapper = comfy_adapter.diffusion_model(model)
    library = DiffusersTransformerDenoiser(wrapper.dit, cond={"class_labels": torch.tensor([10])})
    x = torch.randn(3, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(call(model, x, 0.3), library.velocity(x, 0.3))
    with pytest.raises(HSpaceError, match="8x8 pixels expected"):
        call(model, torch.randn(1, 1, 16, 16), 0.3)


def test_a_block_replacement_controls_the_block():
    """Called with the block's image tokens and original_block, as comfy/ldm/flux/model.py calls its replacements:
    calling original_block is the plain forward bit for bit; not calling it skips the block."""
    model = dit_model()
    wrapper = comfy_adapter.diffusion_model(model)
    x = torch.randn(2, 1, SIZE, SIZE)
    plain = call(model, x, 0.5)
    seen = []

    def through(args, extra):
        seen.append((tuple(args["img"].shape), args["transformer_options"]["block_index"],
                     args["transformer_options"]["sigmas"][0].item()))
        return extra["original_block"](args)

    model.set_model_patch_replace(through, "dit", "double_block", 2)
    assert torch.equal(call(model, x, 0.5), plain)
    assert seen == [((2, TOKENS, DIM), 2, 0.5)]
    assert wrapper.transformer_blocks.transformer_options is None  # the call's options live only for the call

    model.set_model_patch_replace(lambda args, extra: {"img": args["img"]}, "dit", "double_block", 2)
    handle = wrapper.transformer_blocks[2].register_forward_hook(lambda module, inputs, output: inputs[0])
    try:
        skipped = call(FakePatcher(model.model), x, 0.5)  # no replacement: the hook skips block 2
    finally:
        handle.remove()
    assert torch.equal(call(model, x, 0.5), skipped) and not torch.equal(skipped, plain)


def test_the_weights_keep_diffusers_names():
    wrapper = comfy_adapter.diffusion_model(dit_model())
    assert set(wrapper.dit.state_dict()) == set(tiny_dit(size=SIZE, num_layers=LAYERS).state_dict())
    assert wrapper.transformer_blocks[0].norm1 is wrapper.dit.transformer_blocks._modules["0"].norm1


def test_the_family_its_sites_and_token_width():
    model = dit_model()
    assert comfy_adapter.family(model) == "PixelFlowDiT"
    assert comfy_adapter.default_site(model) == "transformer_blocks.2.output"
    assert comfy_adapter.resolve_site(model, "transformer_blocks.3.output") == "transformer_blocks.3.output"
    assert comfy_adapter.token_dim(model) == DIM
    assert comfy_adapter.noise_form(model).name == "flow"
    for site, words in (("transformer_blocks.4.output", "out of range"), ("mid_block.output", "attention's output")):
        with pytest.raises(HSpaceError, match=words):
            comfy_adapter.resolve_site(model, site)


def test_patched_model_runs_the_controller_at_the_site_and_a_zero_edit_is_bitwise_plain():
    model = dit_model()
    x = torch.randn(2, 1, SIZE, SIZE)
    plain = call(model, x, 0.25)
    controller = Recorder(shift=1.0)
    patched = comfy_adapter.patch_model(model, controller, hook_site="transformer_blocks.1.output")
    assert list(patched.replacements()) == [("double_block", 1)] and model.replacements() == {}
    assert not torch.equal(call(patched, x, 0.25), plain)
    assert controller.calls == [((2, TOKENS, DIM), 250.0, [0], 0.25)]  # timestep 1000 sigma, as trained
    zero = Direction(torch.zeros(TOKENS, DIM), meta={"hook_site": "transformer_blocks.1.output"})
    edited = comfy_adapter.patch_model(model, Bottleneck([EditSpec(zero, 1.0)]),
                                       hook_site="transformer_blocks.1.output")
    assert torch.equal(call(edited, x, 0.25), plain)


def test_an_attention_site_sees_what_the_librarys_attention_site_sees():
    """ComfyUI's attn1_output_patch, which the wrapper applies to each block's self-attention output for the call it
    is given in: at ``transformer_blocks.<i>.attn.output`` the patch gets the library's h there, bit for bit, and
    only that block's attention is edited."""
    model = dit_model()
    wrapper = comfy_adapter.diffusion_model(model)
    site = "transformer_blocks.1.attn.output"
    x = torch.randn(2, 1, SIZE, SIZE)
    seen = []
    patched = comfy_adapter.patch_model(model, lambda h, *args, **kwargs: seen.append(h) or h, hook_site=site)
    assert torch.equal(call(patched, x, 0.25), call(model, x, 0.25))
    library = DiffusersTransformerDenoiser(wrapper.dit, site=site, cond={"class_labels": torch.tensor([10])})
    with torch.no_grad():
        assert len(seen) == 1 and torch.equal(seen[0], library.encode(x, 0.25))
    for value, same in ((0.0, True), (1.0, False)):
        direction = Direction(torch.full((TOKENS, DIM), value), meta={"hook_site": site})
        edited = comfy_adapter.patch_model(model, Bottleneck([EditSpec(direction, 1.0)]), hook_site=site)
        assert torch.equal(call(edited, x, 0.25), call(model, x, 0.25)) is same
    assert all(not block.attn1._forward_hooks for block in wrapper.transformer_blocks)  # hooks live for the call


def test_the_fingerprint_is_the_librarys_so_directions_go_both_ways():
    model = dit_model()
    wrapper = comfy_adapter.diffusion_model(model)
    site = "transformer_blocks.2.output"
    library = DiffusersTransformerDenoiser(tiny_dit(size=SIZE, num_layers=LAYERS),
                                           cond={"class_labels": torch.tensor([10])})
    assert _sampling.fingerprint(model, (TOKENS, DIM), site) == library.fingerprint()
    from_library = Direction(torch.ones(TOKENS, DIM), meta={"fingerprint": library.fingerprint()})
    patched = apply.apply_direction(model, [from_library], 1.0, "direction", 0.0, 1.0, "both", False)
    assert list(patched.replacements()) == [("double_block", 2)]
    from_comfy = Direction(torch.ones(TOKENS, DIM), meta={"fingerprint": _sampling.fingerprint(model, (TOKENS, DIM))})
    from_comfy.check_model(library.fingerprint())
    other = dit_model(seed=1)
    with pytest.raises(HSpaceError, match="another model"):
        apply.apply_direction(other, [from_library], 1.0, "direction", 0.0, 1.0, "both", False)
    assert wrapper.transformer_blocks.transformer_options is None


def test_nodes_treat_it_as_an_unconditional_pixel_model_with_the_librarys_autograd():
    model = dit_model()
    assert _sampling.is_pixel_model(model)
    assert _sampling.conditioning(model, None, "positive")[0][1] == {}
    denoiser = _denoisers.autograd_denoiser(model, hook_site="transformer_blocks.1.output")
    assert isinstance(denoiser, DiffusersTransformerDenoiser) and denoiser.site.name == "transformer_blocks.1.output"
    x = torch.randn(1, 1, SIZE, SIZE)
    h = denoiser.encode(x, 0.5)
    assert h.shape == (1, TOKENS, DIM)
    with torch.no_grad():
        torch.testing.assert_close(denoiser.decode_from(x, 0.5, h), call(model, x, 0.5))


def test_the_loader_offers_the_embedded_dit():
    choices = pixel_nodes.HSpacePixelModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert choices[:2] == [pixel_model.EMBEDDED, pixel_model.EMBEDDED_DIT]
    assert pixel_nodes._resolve_choice(pixel_model.EMBEDDED_DIT) == pixel_model.EMBEDDED_DIT
    with pytest.raises(HSpaceError, match="DiTTransformer2DModel"):
        pixel_model.DiffusersDiTWrapper(torch.nn.Linear(1, 1))


def test_a_pixel_unets_fingerprint_is_the_librarys_and_an_old_comfyui_one_gets_the_advice():
    from tiny import tiny_unet

    from hspace_core.denoisers import DiffusersDenoiser
    from hspace_core.direction import model_fingerprint
    from hspace_core.schedule import VPSchedule

    class PixelDDPM:  # named like the loader's BaseModel; a UNet's fingerprint reads only its diffusion model
        def __init__(self, inner: torch.nn.Module):
            self.diffusion_model = inner

    wrapper = pixel_model.DiffusersUNetWrapper(tiny_unet(channels=1))
    model = FakePatcher(PixelDDPM(wrapper))
    library = DiffusersDenoiser(tiny_unet(channels=1), VPSchedule.linear()).fingerprint()
    assert _sampling.fingerprint(model, tuple(library["h_shape"])) == library
    old = model_fingerprint(wrapper, "PixelDDPM", library["h_shape"])  # what earlier nodes recorded
    direction = Direction(torch.ones(*library["h_shape"]), meta={"fingerprint": old})
    with pytest.raises(HSpaceError, match="earlier hspace's ComfyUI nodes on a pixel model"):
        direction.check_model(library)
    direction.check_model(library, allow_foreign=True)
