"""The pack's nodes on the embedded DiT, loaded through the pack's loader node in a real ComfyUI, in-process.

Run with ComfyUI's Python (tests/comfyui/test_dit_comfyui.py does):

    python dit_check.py COMFYUI_PATH

Loads "hspace-mnist-16 DiT (embedded)" with HSpacePixelModelLoader, samples it with ComfyUI's own KSampler (euler,
simple scheduler) and compares with the library's HSpacePipeline.default_dit() on the same noise and sigmas, then
runs Capture h, PCA, Apply Direction and the Asyrp Sampler, the Jacobian node, and exchanges directions with the
library; prints what the test checks as JSON.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STEPS, SEED, BATCH = 20, 7, 4


def main(comfy_path: str) -> None:
    sys.path.insert(0, comfy_path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.sample
    import comfy.samplers
    import nodes as comfy_nodes  # ComfyUI's nodes.py (the pack is imported as hspace_pack below)

    torch.set_num_threads(1)
    repo = HERE.parents[1]
    spec = importlib.util.spec_from_file_location("hspace_pack", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    sys.modules["hspace_pack"] = pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    from hspace_pack.hspace_core.embedded import load_evaluator
    from hspace_pack.hspace_core.errors import HSpaceError
    from hspace_pack.hspace_core.pipeline import HSpacePipeline
    from hspace_pack.hspace_core.samplers import sample_ddim
    from hspace_pack.nodes import (_sampling, apply, capture, comfy_adapter, discovery, local_directions,
                                   pixel_model, pixel_nodes)

    model = pixel_nodes.HSpacePixelModelLoader().load(pixel_model.EMBEDDED_DIT)[0]
    sampling = model.get_model_object("model_sampling")
    result = {"base_model": type(model.model).__name__, "model_sampling": [c.__name__ for c in type(sampling).__mro__],
              "family": comfy_adapter.family(model), "default_site": comfy_adapter.default_site(model),
              "token_dim": comfy_adapter.token_dim(model)}
    empty = pixel_nodes.HSpaceUnconditional().make()[0]
    latent = comfy_nodes.EmptyLatentImage().generate(16, 16, BATCH)[0]

    # what the diffusion model receives: ComfyUI's timestep for each call's sigma
    received = []

    def record(module, args, kwargs):
        received.append((float(kwargs["transformer_options"]["sigmas"].flatten()[0]), float(args[1].flatten()[0])))

    handle = model.model.diffusion_model.register_forward_pre_hook(record, with_kwargs=True)
    ksampled = comfy_nodes.KSampler().sample(model, SEED, STEPS, 1.0, "euler", "simple", empty, empty, latent)[0]
    handle.remove()
    result["timestep_minus_1000_sigma"] = max(abs(t - 1000 * s) for s, t in received)
    result["calls"] = len(received)

    pipe = HSpacePipeline.default_dit()
    sigmas = pipe.sigmas(STEPS)
    comfy_sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS)
    result["simple_sigmas_vs_library"] = float((comfy_sigmas.double() - sigmas).abs().max())
    samples = _sampling._latent_samples(model, latent)
    noise = comfy.sample.prepare_noise(samples, SEED)
    with torch.no_grad():
        library = sample_ddim(pipe.denoiser, noise, sigmas, disable=True)
    result["ksampler_vs_library"] = float((ksampled["samples"] - library).abs().max())
    result["ksampler_batch"] = list(ksampled["samples"].shape)
    evaluator = load_evaluator()
    comfy_digits, _ = evaluator.predict(ksampled["samples"].clamp(-1, 1))
    library_digits, _ = evaluator.predict(library.clamp(-1, 1))
    result["digits"] = [comfy_digits.tolist(), library_digits.tolist()]
    one = comfy_nodes.KSampler().sample(model, SEED, STEPS, 1.0, "euler", "simple", empty, empty,
                                        comfy_nodes.EmptyLatentImage().generate(16, 16, 1)[0])[0]["samples"]
    _, captured = pipe.capture([SEED], steps=STEPS)
    result["ksampler_vs_pipeline_capture"] = float((one - captured).abs().max())  # same seed, same noise

    # Capture h -> PCA -> Apply Direction -> Asyrp Sampler
    trajectory, _ = capture.HSpaceCaptureH().capture(model, comfy_sigmas, latent, 8, 0, 1.0, 0.0, "memory", "x")
    result["trajectory_shape"] = list(trajectory.h.shape)
    result["trajectory_site"] = trajectory.meta["hook_site"]
    result["fingerprint_is_librarys"] = trajectory.meta["fingerprint"] == pipe.fingerprint
    direction = discovery.HSpacePCA().discover(trajectory, 2, True, True, "auto")["result"][0][0]
    ddim = comfy_adapter.as_comfy_sampler(sample_ddim, form=_sampling.FLOW)
    plain = _sampling.run_comfy_sampler(model, ddim, comfy_sigmas, latent, empty, empty, 1.0, noise, SEED)["samples"]
    asyrp = apply.HSpaceAsyrpSampler().make(model, "asymmetric", 500, 0, 0.0, 1.0, 0)[0]

    def edited(strength: float, edit=direction, sampler=asyrp) -> torch.Tensor:
        patched = apply.HSpaceApplyDirection().apply(model, [edit], strength, "direction", 0.0, 1.0, "both", False)[0]
        replacements = patched.model_options["transformer_options"]["patches_replace"]["dit"]
        result["replacements"] = sorted(map(list, replacements))
        return _sampling.run_comfy_sampler(patched, sampler, comfy_sigmas, latent, empty, empty, 1.0, noise,
                                           SEED)["samples"]

    result["zero_is_bitwise_plain"] = torch.equal(edited(0.0), plain)
    result["plain_vs_ksampler"] = float((plain - ksampled["samples"]).abs().max())
    comfy_edit = edited(3.0)
    result["edit_change"] = float((comfy_edit - plain).abs().max())

    # the same edit of every step in the library, with the ComfyUI direction (its fingerprint is the library's)
    every_step = apply.HSpaceAsyrpSampler().make(model, "asymmetric", 0, 0, 0.0, 1.0, 0)[0]
    with torch.no_grad():
        library_edit = pipe.edit(noise, sigmas, [(direction, 3.0)])
    result["edit_vs_library"] = float((edited(3.0, sampler=every_step) - library_edit).abs().max())
    result["library_edit_change"] = float((library_edit - library).abs().max())
    # and a library direction in ComfyUI, refused nowhere
    library_trajectory, _ = pipe.capture(range(8), steps=STEPS)
    from hspace_pack.hspace_core.discovery.pca import pca_directions

    library_direction = pca_directions(library_trajectory, 1).to_direction(
        0, library_trajectory.timesteps, meta={"fingerprint": pipe.fingerprint})
    result["library_direction_change"] = float((edited(3.0, library_direction) - plain).abs().max())

    jacobian = local_directions.HSpaceJacobianDirections().discover(
        model, comfy.samplers.calculate_sigmas(sampling, "simple", 3),
        comfy_nodes.EmptyLatentImage().generate(16, 16, 1)[0], 3, 2, 0, "subspace", 3,
        "transformer_blocks.1.output")["result"][0]
    result["jacobian"] = {"count": len(jacobian), "site": jacobian[0].meta["hook_site"],
                          "shape": list(jacobian[0].delta.shape), "norm": float(jacobian[0].delta[0].norm())}
    try:
        local_directions.HSpacePullbackEdit().edit(model, comfy_sigmas, latent, 0, 500, 2, 0, "+", 1.0, 1, 0, 3)
    except HSpaceError as exc:
        result["pullback_refused"] = str(exc)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
