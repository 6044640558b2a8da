"""Asyrp Train's CLIP from ComfyUI's own CLIP_VISION and CLIP classes (tiny random weights, no server; needs
COMFYUI_PATH): the directional CLIP loss is differentiable through the vision tower, and a CLIP whose file had no
text_projection (an SD1.5 checkpoint's) is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHECK = r"""
import importlib, json, os, sys, tempfile, types
comfy_path, repo = sys.argv[1:3]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_path)
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.clip_vision, comfy.sd, comfy.sd1_clip, comfy.supported_models_base

pack = types.ModuleType("hspace_pack")
pack.__path__ = [repo]
sys.modules["hspace_pack"] = pack
asyrp_train = importlib.import_module("hspace_pack.nodes.asyrp_train")
HSpaceError = importlib.import_module("hspace_pack.hspace_core.errors").HSpaceError
DirectionalCLIPLoss = importlib.import_module("hspace_pack.hspace_core.discovery.asyrp").DirectionalCLIPLoss

report = {}
with torch.inference_mode():  # as ComfyUI's loader nodes run
    config_file = os.path.join(tempfile.mkdtemp(), "clip_vision.json")  # older ComfyUI takes a path only
    with open(config_file, "w") as f:
        json.dump({"hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 28, "intermediate_size": 64,
                   "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
                   "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 16}, f)
    vision = comfy.clip_vision.ClipVisionModel(config_file)
    vision.load_sd({k: torch.randn_like(v) * 0.05 for k, v in vision.get_sd().items()})
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    tiny_text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    clips = {}
    for name in ("with_projection", "checkpoint_like"):
        clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": tiny_text})
        weights = clip.cond_stage_model.clip_l.transformer.state_dict()
        clip.load_sd({k: torch.randn_like(v) * 0.05 for k, v in weights.items()
                      if name == "with_projection" or k != "text_projection.weight"})
        clips[name] = clip

with torch.inference_mode(False), torch.enable_grad():  # as Asyrp Train runs its training
    encode_image, encode_text = asyrp_train.comfy_clip_encoders(vision, clips["with_projection"])
    loss = DirectionalCLIPLoss(encode_image, encode_text, "digit", "bold digit", templates=("a {}.", "the {}."))
    edited = (torch.rand(2, 1, 16, 16) * 2 - 1).requires_grad_()
    loss(edited, torch.zeros(2, 1, 16, 16)).backward()
    report["grad"] = float(edited.grad.abs().sum())
    report["text_dims"] = list(encode_text(["a digit"]).shape)
    try:
        asyrp_train.comfy_clip_encoders(vision, clips["checkpoint_like"])
        report["checkpoint_like"] = "accepted"
    except HSpaceError as error:
        report["checkpoint_like"] = str(error)
print("REPORT " + json.dumps(report))
"""


def test_comfy_clip_vision_and_clip_train_and_a_projectionless_clip_is_refused(comfyui_dir):
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    done = subprocess.run([python, "-c", CHECK, str(comfyui_dir), str(REPO)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert report["grad"] > 0 and report["text_dims"] == [1, 16]
    # ComfyUI leaves an unloaded projection as uninitialised memory (zeros or NaN here): refused, naming the files
    assert "text_projection" in report["checkpoint_like"] and "models/text_encoders/" in report["checkpoint_like"]
