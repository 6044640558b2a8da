"""A test-only ComfyUI node pack: probes that drive hspace's ComfyUI adapter from real prompts.

Loaded by the server the tests start (never shipped). It imports the repository's ``nodes/`` folder as the
package ``hspace_probe_pack.nodes`` (the repository root as the package ``hspace_probe_pack``, so it does not
depend on how the pack's own ``__init__.py`` registers nodes; ``hspace_core`` is ``hspace_probe_pack.hspace_core``,
the copy the nodes import package-relatively). The patch probes write
one JSON line per model call to ``<output>/hspace_probe/<tag>.jsonl``; the other probes report through ``ui``.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import types

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))

if "hspace_probe_pack" not in sys.modules:
    _pkg = types.ModuleType("hspace_probe_pack")
    _pkg.__path__ = [REPO]
    sys.modules["hspace_probe_pack"] = _pkg

adapter = importlib.import_module("hspace_probe_pack.nodes.comfy_adapter")
pixel_nodes = importlib.import_module("hspace_probe_pack.nodes.pixel_nodes")

from hspace_probe_pack.hspace_core.bottleneck import Bottleneck, EditSpec  # noqa: E402
from hspace_probe_pack.hspace_core.direction import Direction  # noqa: E402


def _records_path(tag: str) -> str:
    import folder_paths

    folder = os.path.join(folder_paths.get_output_directory(), "hspace_probe")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{tag}.jsonl")


class RecordingController:
    """A Bottleneck that also appends what it saw on every call to a JSON-lines file."""

    def __init__(self, bottleneck: Bottleneck, path: str):
        self.bottleneck, self.path = bottleneck, path

    def shifts_at(self, timestep: float) -> bool:
        return self.bottleneck.shifts_at(timestep)

    def __call__(self, h, timestep, cond_or_uncond, flags, sigma=None):
        out = self.bottleneck(h, timestep, cond_or_uncond, flags, sigma=sigma)
        captured = self.bottleneck.records[-1].h if self.bottleneck.records else None
        record = {
            "shape": list(h.shape), "timestep": float(torch.as_tensor(timestep).flatten()[0]),
            "sigma": None if sigma is None else float(torch.as_tensor(sigma).flatten()[0]),
            "cond_or_uncond": [int(c) for c in cond_or_uncond],
            "flags": {k: v for k, v in flags.items() if not callable(v)},  # not the published shifts_at
            "captured_shape": None if captured is None else list(captured.shape),
            "row_shift": (out.float() - h.float()).flatten(1).norm(dim=1).tolist(),
            "row_norm": h.float().flatten(1).norm(dim=1).tolist(),
            "inference": bool(h.is_inference()),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return out


class HSpaceProbePatch:
    CATEGORY = "hspace_probe"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "strength": ("FLOAT", {"default": 0.0, "min": -1e4, "max": 1e4, "step": 0.01}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            "rows": (["cond", "uncond", "both"],),
            "site": (["auto", "middle", "output0"],),
            "h_shape": ("STRING", {"default": "320,8,8"}),
            "tag": ("STRING", {"default": "probe"}),
        }}

    def patch(self, model, strength, seed, rows, site, h_shape, tag):
        shape = [int(v) for v in h_shape.split(",")]
        delta = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        direction = Direction(delta / delta.norm())
        bottleneck = Bottleneck([EditSpec(direction, strength)], rows=rows, capture=True)
        return (adapter.patch_model(model, RecordingController(bottleneck, _records_path(tag)), site=site),)


class HSpaceProbeDDIMSampler:
    """hspace_core's sample_ddim as a ComfyUI SAMPLER (through as_comfy_sampler)."""

    CATEGORY = "hspace_probe"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"eta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0})}}

    def make(self, eta):
        from hspace_probe_pack.hspace_core.samplers import sample_ddim

        return (adapter.as_comfy_sampler(sample_ddim, eta=eta),)


class HSpaceProbeAsyrpSampler:
    """hspace_core's sample_asyrp as a ComfyUI SAMPLER: per-call flags must reach the patch through ComfyUI."""

    CATEGORY = "hspace_probe"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mode": (["asymmetric", "symmetric"],)}}

    def make(self, mode):
        from hspace_probe_pack.hspace_core.samplers import sample_asyrp

        return (adapter.as_comfy_sampler(sample_asyrp, mode=mode, batched=True),)


class HSpaceProbeInspect:
    """Report what the adapter's schedule, autograd and progress helpers give for a MODEL."""

    CATEGORY = "hspace_probe"
    RETURN_TYPES = ()
    FUNCTION = "inspect"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": "inspect"})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def inspect(self, model, tag):
        report = {"inference_mode": torch.is_inference_mode_enabled()}
        schedule = adapter.vp_schedule(model)
        report["prediction_type"] = adapter.prediction_type(model)
        report["alphas_cumprod"] = [float(schedule.alphas_cumprod[i]) for i in (0, 499, 999)]
        report["sigma_500"] = float(adapter.timestep_to_sigma(model, 500))
        report["t_of_sigma_500"] = float(adapter.sigma_to_timestep(model, report["sigma_500"]))
        report["window_0_0.5"] = list(adapter.percent_window(model, 0.0, 0.5))
        callback = adapter.progress_callback(3)
        report["progress"] = callback is not None
        for i in range(3):
            callback({"i": i})

        copy = adapter.autograd_copy(model)
        report["copy_is_inference"] = any(p.is_inference() for p in copy.model.parameters())
        latent_format = model.get_model_object("latent_format")
        channels = int(latent_format.latent_channels)
        size = 16 if channels == 1 else 8
        with adapter.autograd_enabled():
            import comfy.model_management

            comfy.model_management.load_models_gpu([copy])
            device = copy.load_device
            x = adapter.grad_ready(torch.randn(1, channels, size, size)).to(device).requires_grad_(True)
            sigma = adapter.timestep_to_sigma(model, 500).reshape(1).to(device)
            kwargs = {} if channels == 1 else {"c_crossattn": torch.zeros(1, 1, 768, device=device)}
            out = copy.model.apply_model(x, sigma, **kwargs)
            out.square().sum().backward()
            report["grad_norm"] = float(x.grad.norm())
        unet = getattr(model.model.diffusion_model, "unet", None)
        if unet is not None:  # a pixel model: ComfyUI's x0 must equal hspace_core's diffusers denoiser
            from hspace_probe_pack.hspace_core.denoisers import DiffusersDenoiser

            import comfy.model_management

            comfy.model_management.load_models_gpu([model])
            x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0)) * 3
            x = x.to(model.load_device)
            sigma = adapter.timestep_to_sigma(model, 400).reshape(1).expand(2).to(model.load_device)
            ours = DiffusersDenoiser(unet, schedule, adapter.prediction_type(model))(x, sigma)
            theirs = model.model.apply_model(x, sigma)
            report["pixel_vs_diffusers"] = float((ours - theirs).abs().max())
        return {"ui": {"text": [json.dumps(report)]}}


class HSpaceProbeLongLoop:
    """A slow loop reporting through progress_callback: the Cancel button (/interrupt) must stop it."""

    CATEGORY = "hspace_probe"
    RETURN_TYPES = ()
    FUNCTION = "loop"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 600, "min": 1, "max": 100000})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def loop(self, steps):
        import time

        callback = adapter.progress_callback(steps)
        for i in range(steps):
            time.sleep(0.05)
            callback({"i": i})
        return {"ui": {"text": [f"finished {steps} steps"]}}


class _PreviewBars:
    """Wraps ``latent_preview.prepare_callback`` (every node that previews calls it through the module, at run
    time): one record per bar made, with the (step, total_steps) of every call of its callback."""

    def __init__(self):
        import latent_preview

        self.bars, self.original = [], latent_preview.prepare_callback
        latent_preview.prepare_callback = self.prepare_callback

    def prepare_callback(self, model, steps, *args, **kwargs):
        callback, bar = self.original(model, steps, *args, **kwargs), {"steps": steps, "calls": []}
        self.bars.append(bar)

        def counted(step, x0, x, total_steps):
            bar["calls"].append([int(step), int(total_steps)])
            return callback(step, x0, x, total_steps)

        return counted


PREVIEW_BARS = _PreviewBars()


class HSpaceProbePreviewBars:
    """Reports the preview bars made since the last report (after the LATENT it waits for), and forgets them."""

    CATEGORY = "hspace_probe"
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"after": ("LATENT",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def report(self, after):
        bars, PREVIEW_BARS.bars = PREVIEW_BARS.bars, []
        return {"ui": {"text": [json.dumps(bars)]}}


NODE_CLASS_MAPPINGS = {
    "HSpaceProbeLongLoop": HSpaceProbeLongLoop,
    "HSpaceProbePatch": HSpaceProbePatch,
    "HSpaceProbeDDIMSampler": HSpaceProbeDDIMSampler,
    "HSpaceProbeAsyrpSampler": HSpaceProbeAsyrpSampler,
    "HSpaceProbeInspect": HSpaceProbeInspect,
    "HSpaceProbePreviewBars": HSpaceProbePreviewBars,
    **{f"HSpaceProbe_{name}": cls for name, cls in pixel_nodes.NODE_CLASS_MAPPINGS.items()},
}
