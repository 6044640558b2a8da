"""The pack's nodes on a tiny random Flux- or SD3-layout model built with ComfyUI's own classes, in-process.

Run with ComfyUI's Python (tests/comfyui/test_transformer_comfyui.py does):

    python transformer_check.py COMFYUI_PATH flux|sd3

Builds ``comfy.ldm.flux.model.Flux`` (hidden size 128, one head, 2 double and 2 single blocks) or SD3's
``OpenAISignatureMMDITWrapper`` (depth 2: hidden size 128, 2 joint blocks) with 16-channel latents, 32-wide text
tokens and random weights, loads its state dict through ``comfy.sd.load_diffusion_model_state_dict`` (ComfyUI
detects the layout: ``comfy.model_base.Flux`` / ``SD3`` with a CONST model sampling, in a ModelPatcher), then runs
Capture h, PCA, Apply Direction, the Asyrp Sampler and the Strength Sweep nodes on it, then the attention-output
sites (what the patch sees, edits, Jacobian directions), and prints what the test checks as JSON.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LATENT = (2, 16, 8, 8)  # 2 images, 16 channels, 8x8 latents: 4x4 = 16 image tokens in 2x2 patches


def random_state(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fan-in scaled normal weights, small random biases, unit norm scales."""
    out = {}
    for name, tensor in module.state_dict().items():
        if tensor.ndim == 1 and name.endswith("scale"):
            out[name] = torch.ones(tensor.shape)
        elif tensor.ndim == 1:
            out[name] = 0.02 * torch.randn(tensor.shape, generator=generator)
        else:
            out[name] = torch.randn(tensor.shape, generator=generator) / tensor[0].numel() ** 0.5
    return out


def build(family: str, context_dim: int = 32, pooled_dim: int = 16, guidance_embed: bool = False) -> torch.nn.Module:
    """The tiny network; ``context_dim`` / ``pooled_dim``: the width of the text tokens and of the pooled text
    embedding it takes, ``guidance_embed``: Flux's distilled-guidance input (flux1-dev has it, schnell not)."""
    import comfy.ops

    if family == "flux":
        from comfy.ldm.flux.model import Flux

        return Flux(in_channels=16, out_channels=16, vec_in_dim=pooled_dim, context_in_dim=context_dim,
                    hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56],
                    theta=10000, patch_size=2, qkv_bias=True, guidance_embed=guidance_embed, txt_ids_dims=[],
                    device="cpu", operations=comfy.ops.disable_weight_init)
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    return OpenAISignatureMMDITWrapper(
        patch_size=2, in_channels=16, out_channels=16, depth=2, adm_in_channels=pooled_dim, pos_embed_max_size=8,
        num_patches=64, context_embedder_config={"target": "torch.nn.Linear",
                                                 "params": {"in_features": context_dim, "out_features": 128}},
        device="cpu", operations=comfy.ops.disable_weight_init)


# the site captured and edited, and another one of the same model
SITES = {"flux": ("single_blocks.1.output", "double_blocks.0.output"),
         "sd3": ("joint_blocks.0.output", "joint_blocks.1.output")}
# attention-output sites, and the module of ComfyUI's block whose input holds that attention output (the image
# tokens of it from the token ``start`` and its first ``width`` channels): the independent recording
ATTENTION_SITES = {"flux": {"double_blocks.0.attn.output": ("double_blocks.0.img_attn.proj", 0, None),
                            "single_blocks.0.attn.output": ("single_blocks.0.linear2", 5, 128)},
                   "sd3": {"joint_blocks.1.attn.output": ("joint_blocks.1.x_block.attn.proj", 0, None)}}


def main(comfy_path: str, family: str) -> None:
    sys.path.insert(0, comfy_path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.sd

    torch.set_num_threads(1)
    network = build(family)
    model = comfy.sd.load_diffusion_model_state_dict(random_state(network, torch.Generator().manual_seed(0)))

    repo = HERE.parents[1]  # the pack, imported under a fixed name whatever its folder is called
    spec = importlib.util.spec_from_file_location("hspace_pack", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    sys.modules["hspace_pack"] = pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    from hspace_pack.hspace_core.errors import HSpaceError
    from hspace_pack.hspace_core.samplers import sample_ddim
    from hspace_pack.nodes import _sampling, apply, capture, comfy_adapter, discovery, inversion, local_directions

    generator = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 5, 32, generator=generator), {"pooled_output": torch.randn(1, 16, generator=generator)}]]
    latent = {"samples": torch.zeros(LATENT)}
    sigmas = torch.linspace(1.0, 0.0, 5)
    result = {"base_model": type(model.model).__name__,
              "model_sampling": [c.__name__ for c in type(model.get_model_object("model_sampling")).__mro__],
              "family": comfy_adapter.family(model), "default_site": comfy_adapter.default_site(model)}
    site, other_site = SITES[family]

    trajectory, samples = capture.HSpaceCaptureH().capture(model, sigmas, latent, 4, 3, 1.0, 0.0, "memory", "x",
                                                           site=site, positive=positive, negative=positive)
    result["trajectory_shape"] = list(trajectory.h.shape)
    result["trajectory_site"] = trajectory.meta["hook_site"]
    result["fingerprint_site"] = trajectory.meta["fingerprint"]["site"]
    result["timesteps"] = trajectory.timesteps.tolist()

    # the plain sampler reproduces the capture's samples: the hook changes nothing when it only records
    noise = _sampling.random_noise(latent, 3, model)
    ddim = comfy_adapter.as_comfy_sampler(sample_ddim, form=_sampling.FLOW)
    plain = _sampling.run_comfy_sampler(model, ddim, sigmas, latent, positive, positive, 1.0, noise, 3)["samples"]
    result["capture_is_plain_sampling"] = torch.equal(plain, samples["samples"][:2])

    directions = discovery.HSpacePCA().discover(trajectory, 2, True, True, "auto")["result"][0]
    direction = directions[0]
    result["direction_site"] = direction.meta["hook_site"]
    result["direction_shape"] = list(direction.delta.shape)

    def edited(strength: float, sampler=ddim) -> torch.Tensor:
        patched = apply.HSpaceApplyDirection().apply(model, [direction], strength, "direction", 0.0, 1.0, "both",
                                                     False)[0]
        result.setdefault("replacements", sorted(map(list, patched.model_options["transformer_options"]
                                                     ["patches_replace"]["dit"])))
        return _sampling.run_comfy_sampler(patched, sampler, sigmas, latent, positive, positive, 2.0, noise,
                                           3)["samples"]

    reference = _sampling.run_comfy_sampler(model, ddim, sigmas, latent, positive, positive, 2.0, noise, 3)["samples"]
    result["zero_is_bitwise_plain"] = torch.equal(edited(0.0), reference)
    result["edit_change"] = float((edited(3.0) - reference).abs().max())

    from hspace_pack.hspace_core.direction import Direction

    at_default = Direction(torch.randn(16, 128, generator=generator), meta={"hook_site": result["default_site"]})
    for strength in (0.0, 3.0):
        patched = apply.apply_direction(model, [at_default], strength, "direction", 0.0, 1.0, "both", False)
        out = _sampling.run_comfy_sampler(patched, ddim, sigmas, latent, positive, positive, 2.0, noise, 3)["samples"]
        result[f"default_site_change_{strength:g}"] = float((out - reference).abs().max())

    asyrp = apply.HSpaceAsyrpSampler().make(model, "asymmetric", 500, 0, 0.0, 1.0, 0)[0]
    result["asyrp_zero_is_bitwise_plain"] = torch.equal(edited(0.0, asyrp), reference)
    result["asyrp_edit_change"] = float((edited(3.0, asyrp) - reference).abs().max())

    sweep = apply.HSpaceStrengthSweep().sweep(model, [direction], sigmas, {"samples": torch.zeros(1, 16, 8, 8)}, 3,
                                              1.0, -2.0, 2.0, 3, "direction", 0.0, 1.0, "both", False, positive,
                                              positive, vae=_LatentAsImage())
    result["sweep_images"] = list(sweep["result"][1].shape)

    supervised = discovery.HSpaceSupervisedDirection().discover(trajectory.select(slice(0, 2)),
                                                                 trajectory.select(slice(2, 4)), "mean_difference")[0][0]
    result["supervised"] = {"site": supervised.meta["hook_site"], "shape": list(supervised.delta.shape),
                            "replacements": sorted(map(list, apply.apply_direction(
                                model, [supervised], 1.0, "direction", 0.0, 1.0, "both", False).model_options[
                                "transformer_options"]["patches_replace"]["dit"]))}

    image = {"samples": torch.randn(1, 16, 8, 8, generator=generator)}
    generation = torch.linspace(1.0, 0.0, 11)
    for method in ("ddim", "edit_friendly"):
        record, inverted, x_T = inversion.HSpaceInvertImage.execute(model, generation, image, method, 1.0, 0,
                                                                    positive, positive, site=site)
        back = inversion.HSpaceSampleFromNoise.execute(model, record, "ddim", 1.0, 0, positive,
                                                       positive)["result"][0]["samples"]
        result[f"{method}_inversion"] = {"site": inverted.meta["hook_site"], "steps": inverted.h.shape[1],
                                         "x_T_finite": bool(torch.isfinite(x_T["samples"]).all()),
                                         "reconstruction_error": float((back - image["samples"]).abs().max())}
        if method == "edit_friendly":
            patched = apply.HSpaceApplyDirection().apply(model, [direction], 0.0, "direction", 0.0, 1.0, "both",
                                                         False)[0]
            zero = inversion.HSpaceSampleFromNoise.execute(patched, record, {"mode": "asymmetric", "t_edit": 500}, 1.0,
                                                           0, positive, positive)["result"][0]["samples"]
            result["asymmetric_zero_edit_is_bitwise_reconstruction"] = torch.equal(zero, back)

    try:
        jacobian = local_directions.HSpaceJacobianDirections().discover(
            model, torch.linspace(1.0, 0.0, 4), {"samples": torch.zeros(1, 16, 8, 8)}, 3, 2, 0, "subspace", 5, site,
            source=positive, edit=positive)["result"][0]
        result["jacobian"] = {"count": len(jacobian), "site": jacobian[0].meta["hook_site"],
                              "shape": list(jacobian[0].delta.shape),
                              "norm": float(jacobian[0].delta[0].norm())}  # unit vector times the singular value
    except HSpaceError as exc:
        result["jacobian"] = {"refused": str(exc)}
    try:
        local_directions.HSpacePullbackEdit().edit(model, sigmas, latent, 0, 500, 2, 0, "+", 1.0, 1, 0, 3,
                                                   source=positive, edit=positive)
    except HSpaceError as exc:
        result["pullback_refused"] = str(exc)

    result["products"] = {site: products(model, site, positive)
                          for site in (result["default_site"], *ATTENTION_SITES[family])}
    result["attention"] = {site: attention_site(model, site, *where, positive, noise, reference)
                           for site, where in ATTENTION_SITES[family].items()}

    try:
        apply.apply_direction(model, [direction.with_delta(direction.delta, hook_site=other_site)],
                              1.0, "direction", 0.0, 1.0, "both", False)
    except HSpaceError as exc:
        result["other_site_refused"] = str(exc)
    print(json.dumps(result))


def products(model, site: str, positive) -> dict:
    """The Jacobian products at ``site`` against finite differences and each other: J v by torch.func.jvp vs
    (f(h + e v) - f(h - e v)) / 2e, and <u, J v> vs <J^T u, v> (J^T u by torch.func.vjp), in the autograd copy the
    Jacobian node differentiates (every block after the site is in the product)."""
    from hspace_pack.nodes import comfy_adapter
    from hspace_pack.nodes._denoisers import autograd_denoiser

    generator = torch.Generator().manual_seed(5)
    x, sigma = torch.randn(1, 16, 8, 8, generator=generator), 0.6
    denoiser = autograd_denoiser(model, positive, site)
    with comfy_adapter.autograd_enabled():
        h = denoiser.encode(x, sigma).detach()
        v = torch.randn(h.shape, generator=generator)
        v = v / v.norm()
        u = torch.randn(x.shape, generator=generator)
        decode = lambda hh: denoiser.decode_from(x, sigma, hh)  # noqa: E731
        jv = torch.func.jvp(decode, (h,), (v,))[1]
        jtu = torch.func.vjp(decode, h)[1](u)[0]
        step = 1e-2 * h.norm()
        difference = (decode(h + step * v) - decode(h - step * v)) / (2 * step)
    return {"jvp_vs_difference": float((jv - difference).norm() / jv.norm()),
            "adjoint_mismatch": float(abs((u * jv).sum() - (jtu * v).sum()) / (u.norm() * jv.norm())),
            "jv_norm": float(jv.norm())}


def attention_site(model, site: str, module_name: str, start: int, width: int | None, positive, noise,
                   reference) -> dict:
    """What the pack's patch sees at an attention site against what the block's output projection is given (a
    forward pre-hook), on the same sampling run; a zero and a non-zero direction there; Jacobian directions."""
    from hspace_pack.hspace_core.direction import Direction
    from hspace_pack.hspace_core.samplers import sample_ddim
    from hspace_pack.nodes import _sampling, apply, comfy_adapter, local_directions

    latent, sigmas = {"samples": torch.zeros(LATENT)}, torch.linspace(1.0, 0.0, 5)
    ddim = comfy_adapter.as_comfy_sampler(sample_ddim, form=_sampling.FLOW)
    seen, projected = [], []

    def controller(h, timestep, cond_or_uncond, flags, sigma=None):
        seen.append(h.clone())
        return h

    module = model.model.diffusion_model.get_submodule(module_name)
    handle = module.register_forward_pre_hook(
        lambda _, inputs: projected.append(inputs[0][:, start:start + 16, :width].clone()))
    try:
        patched = comfy_adapter.patch_model(model, controller, hook_site=site)
        _sampling.run_comfy_sampler(patched, ddim, sigmas, latent, positive, positive, 2.0, noise, 3)
    finally:
        handle.remove()
    out = {"calls": len(seen), "shape": list(seen[0].shape),
           "equal_to_projection_input": len(seen) == len(projected) and all(map(torch.equal, seen, projected))}
    generator = torch.Generator().manual_seed(3)
    asyrp = apply.HSpaceAsyrpSampler().make(model, "asymmetric", 500, 0, 0.0, 1.0, 0)[0]
    for value in (0.0, 1.0):
        direction = Direction(value * torch.randn(16, 128, generator=generator), meta={"hook_site": site})
        edited = apply.apply_direction(model, [direction], 3.0, "direction", 0.0, 1.0, "both", False)
        for name, sampler in (("change", ddim), ("asyrp_change", asyrp)):
            samples = _sampling.run_comfy_sampler(edited, sampler, sigmas, latent, positive, positive, 2.0, noise,
                                                  3)["samples"]
            out[f"{name}_{value:g}"] = float((samples - reference).abs().max())
    jacobian = local_directions.HSpaceJacobianDirections().discover(
        model, torch.linspace(1.0, 0.0, 4), {"samples": torch.zeros(1, 16, 8, 8)}, 3, 2, 0, "subspace", 5, site,
        source=positive, edit=positive)["result"][0]
    out["jacobian"] = {"count": len(jacobian), "site": jacobian[0].meta["hook_site"],
                       "shape": list(jacobian[0].delta.shape)}
    return out


class _LatentAsImage:
    """A VAE stand-in for the sweep: the first three latent channels as an image [B, H, W, 3]."""

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return samples[:, :3].movedim(1, -1).clamp(-1, 1) * 0.5 + 0.5


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
