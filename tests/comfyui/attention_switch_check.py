"""The Jacobian path of a ComfyUI UNet when the active attention has no double backward (as xformers').

Run with ComfyUI's Python (tests/comfyui/test_attention_switch_comfyui.py does):

    python attention_switch_check.py COMFYUI_PATH

Builds the tiny SD1.5-layout UNet of tiny_checkpoint.py in-process, loads it as a ComfyUI MODEL, and computes
a pullback basis (n = 2, three iterations, reverse and forward JVP) through the pack's ComfyUNetDenoiser:
with ComfyUI's own attention, then with a once-differentiable attention (a hand-written backward with no
derivative of its own, as xformers' kernel) made the active backend, with and without the pack's switch to
PyTorch attention. Prints the singular values as JSON.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


class OnceDifferentiableAttention(torch.autograd.Function):
    """softmax(q kᵀ/√d) v, [b, heads, n, d], whose backward has no derivative."""

    @staticmethod
    def forward(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        p = torch.softmax(q @ k.transpose(-1, -2) * scale, -1)
        dp = grad @ v.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        return scale * ds @ k, scale * ds.transpose(-1, -2) @ q, p.transpose(-1, -2) @ grad


def main(comfy_path: str) -> None:
    sys.path.insert(0, comfy_path)
    sys.path.insert(0, str(HERE))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ops
    import comfy.sd
    from comfy.ldm.modules import attention
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from tiny_checkpoint import _randomize

    torch.set_num_threads(1)
    unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                     channel_mult=[1], transformer_depth=[1], transformer_depth_middle=1,
                     transformer_depth_output=[1, 1], context_dim=768, num_heads=8, use_spatial_transformer=True,
                     use_linear_in_transformer=False, legacy=False, device="cpu",
                     operations=comfy.ops.disable_weight_init)
    model = comfy.sd.load_diffusion_model_state_dict(_randomize(unet, torch.Generator().manual_seed(0)))

    repo = HERE.parents[1]  # the pack, imported under a fixed name whatever its folder is called
    spec = importlib.util.spec_from_file_location("hspace_pack", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    sys.modules["hspace_pack"] = pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    from hspace_pack.hspace_core.discovery.pullback import encoder_function, pullback_basis
    from hspace_pack.nodes import _denoisers, comfy_adapter

    positive = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)), {}]]
    x = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2))

    def sigmas(mode: str) -> list[float]:
        denoiser = _denoisers.autograd_denoiser(model, positive)
        with torch.inference_mode(False), torch.enable_grad():
            basis = pullback_basis(encoder_function(denoiser, 5.0), x, num_vectors=2, max_iter=3, jvp_mode=mode)
        return basis.singular_values.tolist()

    result = {"comfy_attention": attention.optimized_attention.__name__, "reference": sigmas("reverse")}

    @attention.wrap_attn
    def attention_once_differentiable(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                                      skip_output_reshape=False, **kwargs):
        b, n, inner = q.shape
        split = lambda t: t.reshape(b, t.shape[1], heads, inner // heads).transpose(1, 2)
        return OnceDifferentiableAttention.apply(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, inner)

    attention.optimized_attention = attention.optimized_attention_masked = attention_once_differentiable
    if not hasattr(model, "set_model_optimized_attention"):  # ComfyUI before the per-model attention override
        try:
            sigmas("reverse")
        except comfy_adapter.HSpaceError as err:
            result["refused"] = str(err)
        print(json.dumps(result))
        return
    result["switched_reverse"], result["switched_forward"] = sigmas("reverse"), sigmas("forward")
    comfy_adapter.differentiable_attention = lambda patcher: patcher  # the pack without its switch
    result["unswitched_reverse"] = sigmas("reverse")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
