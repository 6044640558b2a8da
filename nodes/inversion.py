"""Real-image inversion (DDIM or edit-friendly DDPM) and sampling back from its noise record, edited or not."""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.checks import check_number
from ..hspace_core.direction import Inversion, Trajectory
from ..hspace_core.samplers import MODES, invert_ddim, invert_edit_friendly, sample_asyrp, sample_ddim
from ..hspace_core.schedule import inversion_sigmas

from . import _inputs, _sampling, _v3, comfy_adapter
from ._types import NOISE, TRAJECTORY

CATEGORY = "hspace/inversion"


# The seeds stay outside the DynamicCombo options: the frontend (1.49) leaves a seed's control_after_generate
# widget behind when the option holding it is switched away, which shifts every saved widget value after it.
INVERSION_OPTIONS = {"ddim": {}, "edit_friendly": {"eta": _inputs.eta(1.0, "eta of edit-friendly inversion (> 0; 1 = "
                                                                           "DDPM)")}}
RESAMPLE_OPTIONS = {
    "ddim": {},
    **{mode: {
        "t_edit": _inputs.timestep(400, "edit at timesteps >= t_edit"),
        "t_boost": _inputs.timestep(0, "below t_boost no edit and eta = 1 steps (Asyrp's quality boosting, after "
                                       "DDIM inversion too); 0 = off"),
    } for mode in MODES},
}


class HSpaceInvertImage(_v3.ComfyNode):
    """Invert an encoded image to the noise that regenerates it: deterministic DDIM inversion, or edit-friendly
    DDPM inversion (Huberman-Spiegelglas et al.), which stores one noise map per step and reconstructs exactly.
    Records h along the way (a trajectory of the image, e.g. for supervised directions from real images)."""

    @classmethod
    def define_schema(cls) -> Any:
        return _v3.schema(
            cls, DISPLAY_NAMES[cls.__name__], CATEGORY,
            ["ddim inversion", "edit friendly inversion", "real image edit", "encode to noise"],
            inputs=[*_v3.as_inputs({
                        "model": _inputs.model(),
                        "sigmas": _inputs.sigmas("the generation schedule to invert (the same one samples it back)"),
                        "latent": _inputs.latent("the image to invert (VAEEncode, or Image to Pixel Latent)")}),
                    _v3.mode_combo("method", INVERSION_OPTIONS, "ddim: deterministic, approximate; edit_friendly: "
                                                                "exact, stores a noise map per step"),
                    *_v3.as_inputs({"cfg": _inputs.cfg(),
                                    "seed": _inputs.seed("edit_friendly: seed of the independent noisy images")},
                                   {**_inputs.optional_conditioning(), "site": _inputs.hook_site()})],
            outputs=_v3.as_outputs((NOISE, TRAJECTORY, "LATENT"), ("noise", "trajectory", "x_T"), (
                "the noise record that regenerates the image: x_T, the schedule, noise terms",
                "h of the image at every step of the inversion",
                "x_T as a LATENT")))

    @classmethod
    def execute(cls, model: Any, sigmas: torch.Tensor, latent: dict[str, Any], method: dict[str, Any] | str,
                cfg: float, seed: int, positive: list | None = None, negative: list | None = None,
                site: str | None = None) -> tuple[Inversion, Trajectory, dict[str, Any]]:
        method, options = _v3.chosen(method, "method", INVERSION_OPTIONS)
        meta = {"source": "inversion", "method": method}
        unique_id = _v3.unique_id(cls)
        if method == "ddim":
            x_T, value, trajectory = _sampling.capture(model, invert_ddim, inversion_sigmas(sigmas), latent,
                                                       positive, negative, cfg, None, 0, meta, unique_id,
                                                       hook_site=site)
            record = Inversion(value, sigmas, None, 0.0, trajectory, method, latent["samples"])
        else:
            check_number(options["eta"], "eta", 0.0, 1.0)
            x_T, value, trajectory = _sampling.capture(model, invert_edit_friendly, sigmas, latent, positive,
                                                       negative, cfg, None, seed, meta, unique_id,
                                                       {**options, "seed": seed}, hook_site=site)
            record = Inversion(value[0], sigmas, value[1], options["eta"], trajectory, method, latent["samples"])
        return record, trajectory, x_T


class HSpaceSampleFromNoise(_v3.ComfyNode):
    """Sample back from an inversion's noise record. With the unpatched model it reconstructs the image; with a
    model from Apply Direction it edits it: ddim edits every step the patch allows (symmetric), asymmetric and
    symmetric run the Asyrp process, editing only for t >= t_edit and boosting quality below t_boost with eta = 1
    (Asyrp's quality boosting, also after a deterministic DDIM inversion; the same process as the library's
    HSpacePipeline.edit)."""

    @classmethod
    def define_schema(cls) -> Any:
        return _v3.schema(
            cls, DISPLAY_NAMES[cls.__name__], CATEGORY, ["reconstruct", "edit real image", "resample inversion"],
            inputs=[*_v3.as_inputs({
                        "model": _inputs.model("the model to sample with: the original, or one from Apply Direction"),
                        "noise": _inputs.noise_record()}),
                    _v3.mode_combo("mode", RESAMPLE_OPTIONS, "ddim: the patched model edits every allowed step; "
                                                             "asymmetric (Asyrp) / symmetric: edit only for t >= "
                                                             "t_edit, boost below t_boost"),
                    *_v3.as_inputs({"cfg": _inputs.cfg(),
                                    "seed": _inputs.seed("asymmetric/symmetric: seed of the eta = 1 noise below "
                                                         "t_boost where the record has no noise terms (a DDIM "
                                                         "inversion)")},
                                   _inputs.optional_conditioning())],
            outputs=_v3.as_outputs(("LATENT",), ("samples",),
                                   ("the regenerated (with Apply Direction's model: edited) image's latent",)))

    @classmethod
    def validate_inputs(cls, mode: Any = None, **_: Any) -> str | bool:
        if not isinstance(mode, dict) or mode.get("mode") == "ddim":
            return True
        return _inputs.timestep_window_problem(mode.get("t_edit"), mode.get("t_boost"))

    @classmethod
    def execute(cls, model: Any, noise: Inversion, mode: dict[str, Any] | str, cfg: float, seed: int,
                positive: list | None = None, negative: list | None = None) -> dict[str, Any]:
        mode, chosen = _v3.chosen(mode, "mode", RESAMPLE_OPTIONS)
        options: dict[str, Any] = {"eta": noise.eta, "noises": noise.noises, "seed": seed}
        fn = sample_ddim
        if mode != "ddim":
            fn = sample_asyrp
            options.update(_sampling.asyrp_options(model, mode, chosen["t_edit"], chosen["t_boost"], noise.sigmas))
        latent = {"samples": torch.zeros_like(noise.x_T)}
        samples, _ = _sampling.run_sampler(model, fn, noise.sigmas, latent, positive, negative, cfg,
                                           start=noise.x_T, node_id=_v3.unique_id(cls), options=options)
        # a pixel model's result is shown on the node beside the image that was inverted
        return {"ui": {"images": _sampling.pixel_preview(model, samples["samples"], noise.source)},
                "result": (samples,)}


class HSpaceInversionSampler:
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced that runs DDIM inversion: give it the schedule you will
    sample with, flipped by FlipSigmas, with add_noise off and cfg 1 (or low). It inverts exactly the steps of
    that schedule (FlipSigmas' 1e-4 stand-in for 0 is skipped), so sampling back with DDIM on the unflipped
    schedule, add_noise off, reconstructs the image; with the Asyrp Sampler it edits it."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("a SAMPLER for SamplerCustom that runs DDIM inversion",)
    SEARCH_ALIASES = ["ddim inversion"]
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def make(self) -> tuple[Any]:
        return (comfy_adapter.as_comfy_sampler(invert_ddim),)


NODE_CLASSES = (HSpaceInvertImage, HSpaceSampleFromNoise, HSpaceInversionSampler)
DISPLAY_NAMES = {"HSpaceInvertImage": "Invert Image (hspace)", "HSpaceSampleFromNoise": "Sample From Noise (hspace)",
                 "HSpaceInversionSampler": "DDIM Inversion Sampler (hspace)"}

