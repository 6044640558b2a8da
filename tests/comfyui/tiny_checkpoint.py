"""Write a tiny random-weight checkpoint in the SD1.5 layout, built with ComfyUI's own classes.

Run with ComfyUI's Python from inside a ComfyUI checkout (the test harness does this):

    python tiny_checkpoint.py COMFYUI_PATH OUT.safetensors [SEED]

UNet: the SD1.5 UNet (model_channels 320, context 768, so ComfyUI detects SD15) cut to one
level with one ResBlock/SpatialTransformer per block. CLIP: the full CLIP-L text model of SD1.5
(ComfyUI builds it from a fixed config, so it cannot be shrunk), random. VAE: a TAESD
(taesd_encoder/taesd_decoder keys), which ComfyUI's VAE loader accepts in place of the KL VAE.
Weights are drawn from a seeded generator with fan-in scaling, so the model's outputs are finite
and the file is the same for the same seed.
"""
from __future__ import annotations

import math
import sys

import torch


def _randomize(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict for `module` with fan-in scaled normal weights, zero biases, unit norm scales."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if not tensor.is_floating_point() or tensor.ndim == 0:  # ids, and scalars such as TAESD's vae_scale
            out[name] = tensor.clone()
        elif tensor.ndim == 1 and leaf == "weight":  # GroupNorm / LayerNorm scales
            out[name] = torch.ones(tensor.shape)
        elif leaf == "bias" or tensor.ndim <= 1:
            out[name] = torch.zeros(tensor.shape)
        else:
            fan_in = tensor[0].numel() if tensor.ndim > 1 else tensor.numel()
            if "embedding" in name:
                fan_in = 1
            std = 1.0 / math.sqrt(max(fan_in, 1))
            out[name] = torch.randn(tensor.shape, generator=generator) * std
    return out


def build_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management looks for a GPU
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    generator = torch.Generator().manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=320,
        num_res_blocks=[1], channel_mult=[1],
        transformer_depth=[1], transformer_depth_middle=1, transformer_depth_output=[1, 1],
        context_dim=768, num_heads=8, use_spatial_transformer=True, use_linear_in_transformer=False,
        legacy=False, device="cpu", operations=comfy.ops.disable_weight_init,
    )
    clip = comfy.sd1_clip.SDClipModel(device="cpu", dtype=torch.float32)
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)

    sd: dict[str, torch.Tensor] = {}
    for k, v in _randomize(unet, generator).items():
        sd["model.diffusion_model." + k] = v
    for k, v in _randomize(clip.transformer, generator).items():
        sd["cond_stage_model.transformer." + k] = v.to(torch.float16) if v.is_floating_point() else v
    for k, v in _randomize(taesd, generator).items():
        if k.startswith(("taesd_encoder.", "taesd_decoder.", "vae_scale", "vae_shift")):
            sd["first_stage_model." + k] = v
    return {k: v.contiguous() for k, v in sd.items()}


def main(argv: list[str]) -> None:
    comfy_path, out_path = argv[1], argv[2]
    seed = int(argv[3]) if len(argv) > 3 else 0
    sys.path.insert(0, comfy_path)
    import safetensors.torch

    safetensors.torch.save_file(build_state_dict(seed), out_path)


if __name__ == "__main__":
    main(sys.argv)
