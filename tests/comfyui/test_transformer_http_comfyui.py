"""Flux and SD3 through a real ComfyUI server's HTTP API (needs COMFYUI_PATH), the way a user's workflow runs.

A tiny random Flux-layout model (flux1-dev's layout with hidden size 128, 2 double and 2 single blocks) and a tiny
MMDiT (SD3's layout, 2 joint blocks) are built with ComfyUI's own classes (tiny_transformer.py) and saved to
models/diffusion_models, where Load Diffusion Model (UNETLoader) finds them and ComfyUI's model detection makes them
Flux / SD3. Their text conditioning comes from CLIPTextEncode on the CLIP of the harness's tiny SD1.5-layout
checkpoint (CLIP-L: 768-wide tokens and pooled output, the widths the tiny models are built for), as T5-XXL and
CLIP-G cannot be shrunk in ComfyUI. One POST /prompt per family: Capture h -> PCA -> Pick Direction -> Apply
Direction -> Asyrp Sampler in SamplerCustom, beside the same noise sampled without an edit, with a zero direction
(Scale Direction by 0) and with ComfyUI's own euler; the latents come back through /view.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_transformer import file_name

HERE = Path(__file__).resolve().parent
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# family -> (scheduler of ComfyUI's own example, cfg, hook site of "auto", ComfyUI's base model class)
FAMILIES = {"flux": ("simple", 1.0, "double_blocks.1.output", "Flux"),
            "sd3": ("sgm_uniform", 2.0, "joint_blocks.1.output", "SD3")}
STEPS, BATCH, TOKENS, WIDTH = 4, 2, 16, 128  # 64 px: an 8x8 latent in 2x2 patches
SAMPLED = ("plain", "zero", "edited", "euler", "captured")


@pytest.fixture(scope="module")
def model_files(comfy) -> dict[str, str]:
    """family -> the file name of its tiny model in models/diffusion_models (both built in one call)."""
    folder = comfy.root / "base" / "models" / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, str(HERE / "tiny_transformer.py"), str(comfy.comfy_dir), str(folder)],
                         cwd=comfy.comfy_dir, env=env, capture_output=True, text=True, timeout=300)
    names = {family: file_name(family) for family in FAMILIES}
    assert out.returncode == 0 and all((folder / n).is_file() for n in names.values()), out.stderr[-3000:]
    return names


def with_defaults(prompt: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The prompt with each required widget it leaves out set to the default the server declares (a combo: its
    first option)."""
    for node in prompt.values():
        for name, spec in object_info[node["class_type"]]["input"]["required"].items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if name in node["inputs"] or not (isinstance(kind, list) or kind in WIDGET_TYPES):
                continue
            if "default" in options:
                node["inputs"][name] = options["default"]
            else:
                node["inputs"][name] = kind[0] if isinstance(kind, list) else options["options"][0]
    return prompt


def edit_prompt(family: str, unet_name: str, checkpoint: str) -> dict[str, Any]:
    scheduler, cfg, _, _ = FAMILIES[family]
    prompt: dict[str, Any] = {
        "1": ("UNETLoader", {"unet_name": unet_name, "weight_dtype": "default"}),
        "2": ("CheckpointLoaderSimple", {"ckpt_name": checkpoint}),  # only its CLIP is used
        "3": ("CLIPTextEncode", {"clip": ["2", 1], "text": "a red apple on a wooden table"}),
        "4": ("CLIPTextEncode", {"clip": ["2", 1], "text": "blurry"}),
        "6": ("EmptySD3LatentImage", {"width": 64, "height": 64, "batch_size": BATCH}),
        "7": ("BasicScheduler", {"model": ["1", 0], "scheduler": scheduler, "steps": STEPS, "denoise": 1.0}),
    }
    positive, negative = ["3", 0], ["4", 0]
    if family == "flux":  # as in ComfyUI's Flux example: distilled guidance, cfg 1, the negative zeroed
        prompt["5"] = ("FluxGuidance", {"conditioning": ["3", 0], "guidance": 3.5})
        prompt["4"] = ("ConditioningZeroOut", {"conditioning": ["3", 0]})
        positive = ["5", 0]
    conditioning = {"positive": positive, "negative": negative}
    prompt.update({
        "8": ("HSpaceCaptureH", {"model": ["1", 0], "sigmas": ["7", 0], "latent_image": ["6", 0],
                                 "num_samples": 2 * BATCH, "seed": 0, "cfg": cfg, **conditioning}),
        "9": ("HSpacePCA", {"trajectory": ["8", 0], "num_components": 2}),
        "10": ("HSpacePickDirection", {"directions": ["9", 0], "index": 0}),
        "11": ("HSpaceScaleDirection", {"direction": ["10", 0], "factor": 0.0}),
        "12": ("HSpaceApplyDirection", {"model": ["1", 0], "direction": ["11", 0], "strength": 3.0}),
        "13": ("HSpaceApplyDirection", {"model": ["1", 0], "direction": ["10", 0], "strength": 3.0}),
        "14": ("HSpaceAsyrpSampler", {"model": ["1", 0], "mode": "asymmetric", "t_edit": 500, "t_boost": 0}),
        "15": ("KSamplerSelect", {"sampler_name": "euler"}),
        "16": ("HSpaceDirectionInfo", {"direction": ["10", 0]}),
    })
    # plain (the Asyrp Sampler on the unpatched model), zero direction, edited, ComfyUI's euler; one noise seed
    for node_id, model, sampler in (("20", "1", "14"), ("21", "12", "14"), ("22", "13", "14"), ("23", "1", "15")):
        prompt[node_id] = ("SamplerCustom", {"model": [model, 0], "add_noise": True, "noise_seed": 0, "cfg": cfg,
                                             "sampler": [sampler, 0], "sigmas": ["7", 0], "latent_image": ["6", 0],
                                             **conditioning})
    for i, (name, source) in enumerate(zip(SAMPLED, (["20", 0], ["21", 0], ["22", 0], ["23", 0], ["8", 1]))):
        prompt[str(30 + i)] = ("SaveLatent", {"samples": source, "filename_prefix": f"hspace_http/{family}_{name}"})
    return {node_id: {"class_type": kind, "inputs": inputs} for node_id, (kind, inputs) in prompt.items()}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def run(request, comfy, model_files) -> dict[str, Any]:
    family = request.param
    prompt = with_defaults(edit_prompt(family, model_files[family], comfy.checkpoint), comfy.client.object_info())
    start = time.monotonic()
    outputs = comfy.client.run(prompt, timeout_s=600)
    seconds = time.monotonic() - start
    latents = {name: comfy.client.latent(outputs[str(30 + i)]["latents"][0]) for i, name in enumerate(SAMPLED)}
    print(f"{family}: the prompt ran in {seconds:.1f} s; edit moved the latent by "
          f"{float((latents['edited'] - latents['plain']).abs().max()):.3g}, euler vs hspace "
          f"{float((latents['euler'] - latents['plain']).abs().max()):.3g}")
    return {"family": family, "outputs": outputs, "latents": latents}


def test_the_loaded_model_is_the_family_and_the_direction_its_site(run):
    _, _, site, base_model = FAMILIES[run["family"]]
    info = run["outputs"]["16"]["hspace_info"][0]  # Direction Info of the PCA direction
    assert info["model"] == base_model  # ComfyUI's model detection made the file a Flux / SD3
    assert info["hook_site"] == site and info["method"] == "pca"
    assert info["h_shape"] == [TOKENS, WIDTH] and info["per_timestep_keys"] == STEPS
    assert run["outputs"]["9"]["hspace_spectrum"][0]["explained_variance_ratio"]


def test_a_zero_direction_samples_bitwise_like_plain_sampling(run):
    latents = run["latents"]
    assert latents["plain"].shape == (BATCH, 16, 8, 8) and torch.isfinite(latents["plain"]).all()
    assert torch.equal(latents["zero"], latents["plain"])
    assert torch.equal(latents["captured"][:BATCH], latents["plain"])  # Capture h recorded the plain runs


def test_a_direction_changes_the_output(run):
    assert float((run["latents"]["edited"] - run["latents"]["plain"]).abs().max()) > 1e-2


def test_the_unedited_asyrp_sampler_is_comfyuis_euler(run):
    """hspace's flow step and ComfyUI's euler are the same update on CONST sampling, up to float rounding."""
    assert float((run["latents"]["euler"] - run["latents"]["plain"]).abs().max()) < 1e-4
