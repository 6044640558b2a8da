"""Write tiny random Flux- and SD3-layout diffusion model files that ComfyUI's Load Diffusion Model (UNETLoader)
detects as Flux / SD3, built with ComfyUI's own classes (transformer_check.build).

Run with ComfyUI's Python (tests/comfyui/test_transformer_http_comfyui.py does):

    python tiny_transformer.py COMFYUI_PATH OUT_FOLDER

writes hspace_tiny_flux.safetensors and hspace_tiny_sd3.safetensors there.

The model takes CLIP-L's conditioning (768-wide tokens and pooled output), which the harness's tiny SD1.5-layout
checkpoint's CLIP gives through CLIPTextEncode: the real text encoders of Flux (T5-XXL) and SD3 (CLIP-G, T5-XXL)
have fixed configs in ComfyUI and cannot be shrunk. The Flux one has flux1-dev's guidance input.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from transformer_check import build, random_state

CLIP_L_WIDTH = 768
FAMILIES = ("flux", "sd3")


def file_name(family: str) -> str:
    return f"hspace_tiny_{family}.safetensors"


def main(comfy_path: str, out_folder: str) -> None:
    sys.path.insert(0, comfy_path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import safetensors.torch

    for family in FAMILIES:
        network = build(family, context_dim=CLIP_L_WIDTH, pooled_dim=CLIP_L_WIDTH, guidance_embed=family == "flux")
        state = random_state(network, torch.Generator().manual_seed(0))
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, Path(out_folder) / file_name(family))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
