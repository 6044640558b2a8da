"""Discovery nodes for directions shared by many images: PCA of captured h and supervised directions (Haas et al.).

Image-specific directions (Jacobian, pullback) are in ``local_directions``, Asyrp's training in ``asyrp_train``."""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.checks import check_choice, check_number
from ..hspace_core.direction import Direction
from ..hspace_core.discovery.pca import METHODS as PCA_METHODS
from ..hspace_core.discovery.pca import pca_directions
from ..hspace_core.discovery.supervised import linear_probe_direction, mean_difference, supervised_direction
from ..hspace_core.embedded import load_evaluator
from ..hspace_core.errors import HSpaceError
from ..hspace_core.fileio import ShardedTrajectory
from ..hspace_core.sites import MID_BLOCK

from . import _comfy, _inputs, comfy_adapter
from ._display import spectrum_chart
from ._types import DIRECTION, DirectionSet, TrajectoryValue, first_chunk, h_source, in_memory

CATEGORY = "hspace/discovery"
SUPERVISED_METHODS = ("mean_difference", "linear_probe")
DIGITS = tuple(str(d) for d in range(10))


def spectrum_text(ratios: list[float]) -> str:
    return "\n".join(f"PC{i}: {100 * r:.2f}% of the variance" for i, r in enumerate(ratios))


class HSpacePCA:
    """Principal directions of captured h (Haas et al. 2024): one PCA per timestep (their default) or over all
    steps at once. Outputs the set of the top components, largest first, and their share of the variance."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("directions", "spectrum")
    FUNCTION = "discover"
    HAS_INTERMEDIATE_OUTPUT = True  # ComfyUI re-sends its cached ui (drawn by web/js/hspace.js) on a re-run

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "trajectory": _inputs.trajectory("captured h of many samples (Capture h)"),
            "num_components": ("INT", {"default": 10, "min": 1, "max": 1000,
                                       "tooltip": "how many components to keep (at most samples - 1)"}),
            "per_timestep": ("BOOLEAN", {"default": True, "tooltip": "one PCA per step (Haas's default) instead "
                                                                     "of one over all steps concatenated"}),
            "scaled": ("BOOLEAN", {"default": True, "tooltip": "scale each component by its standard deviation, "
                                                               "so strength is in std units (Haas)"}),
            "method": (list(PCA_METHODS), {"tooltip": "auto: Gram or SVD in memory; for a capture on disk, the "
                                                      "streaming covariance or randomized route"}),
        }, "hidden": _inputs.HIDDEN}

    def discover(self, trajectory: TrajectoryValue, num_components: int, per_timestep: bool, scaled: bool,
                 method: str, unique_id: str | None = None) -> dict[str, Any]:
        chunks = len(trajectory.shards) if isinstance(trajectory, ShardedTrajectory) else 1
        result = pca_directions(h_source(trajectory), num_components, per_timestep=per_timestep, method=method,
                                callback=comfy_adapter.progress_callback(chunks, unique_id))
        first = first_chunk(trajectory)
        meta = {"fingerprint": first.meta.get("fingerprint"), "hook_site": first.meta.get("hook_site", MID_BLOCK)}
        directions = [result.to_direction(i, first.timesteps.tolist(), scaled, meta)
                      for i in range(result.num_components)]
        ratios = result.explained_variance_ratio.mean(0).tolist()
        ui = {"hspace_spectrum": [{"explained_variance_ratio": ratios}],
              "images": _comfy.preview_images(spectrum_chart(ratios))}  # the chart shows in either renderer
        return {"ui": ui, "result": (directions, spectrum_text(ratios))}


class HSpaceSupervisedDirection:
    """A direction from labelled examples (Haas et al. 2024): mean h of the positives minus mean h of the negatives
    at every step, or the normal of a logistic-regression boundary between them (unit norm). Positives and negatives
    are trajectories of generated samples (Capture h) or of inverted real images (Invert Image), same schedule."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    FUNCTION = "discover"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "positive": _inputs.trajectory("h of examples that have the attribute"),
            "negative": _inputs.trajectory("h of examples without it (paired or not)"),
            "method": (list(SUPERVISED_METHODS), {
                "tooltip": "mean_difference: Haas et al.; linear_probe: unit normal of a logistic-regression "
                           "boundary"}),
        }, "hidden": _inputs.HIDDEN}

    def discover(self, positive: TrajectoryValue, negative: TrajectoryValue, method: str,
                 unique_id: str | None = None) -> tuple[DirectionSet]:
        check_choice(method, "method", SUPERVISED_METHODS)
        positive, negative = in_memory(positive), in_memory(negative)
        sites = [t.meta.get("hook_site", MID_BLOCK) for t in (positive, negative)]
        if sites[0] != sites[1]:
            raise HSpaceError(f"positive and negative trajectories must come from one hook site: {sites[0]!r} and "
                              f"{sites[1]!r}")
        if positive.num_steps != negative.num_steps or not torch.allclose(positive.timesteps, negative.timesteps):
            raise HSpaceError(f"positive and negative trajectories must share their steps: timesteps "
                              f"{positive.timesteps.tolist()} and {negative.timesteps.tolist()}")
        if method == "mean_difference":
            delta = mean_difference(positive.h, negative.h)
        else:  # L-BFGS, at most 100 iterations
            progress = comfy_adapter.progress_callback(100, unique_id)
            delta = linear_probe_direction(positive.h, negative.h, callback=progress)
        meta = {"method": f"supervised:{method}", "num_samples": positive.num_samples + negative.num_samples,
                "fingerprint": positive.meta.get("fingerprint"), "hook_site": positive.meta.get("hook_site", MID_BLOCK)}
        return ([Direction(delta, positive.timesteps.tolist(), meta)],)


class HSpaceDigitClassifierDirection:
    """Haas et al.'s classifier-annotated direction, on the embedded digit model: score the captured samples with the
    shipped digit classifier (probability of `digit`) and take the mean h of the k best scored minus that of the k
    worst. Connect both outputs of Capture h (on the embedded model)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("direction", "scores")
    FUNCTION = "discover"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "trajectory": _inputs.trajectory("captured h of generated digits (Capture h on the embedded model)"),
            "samples": _inputs.latent("the samples output of the same Capture h"),
            "digit": (list(DIGITS), {"tooltip": "the attribute: the classifier's probability of it"}),
            "k": ("INT", {"default": 16, "min": 1, "max": 50000,
                          "tooltip": "how many top and bottom scored samples (Haas: 100 of 10,000)"}),
        }}

    def discover(self, trajectory: TrajectoryValue, samples: dict[str, Any], digit: str,
                 k: int) -> tuple[DirectionSet, str]:
        check_choice(digit, "digit", DIGITS)
        check_number(k, "k", 1, integer=True)
        trajectory = in_memory(trajectory)
        images = samples["samples"]
        if images.shape[0] != trajectory.num_samples:
            raise HSpaceError(f"{trajectory.num_samples} embedded-model samples expected (the samples of the same "
                              f"Capture h), got {images.shape[0]}")
        scores = load_evaluator().digit_probability(images, int(digit))
        meta = {"method": f"supervised:classifier(digit {digit})", "num_samples": 2 * k,
                "fingerprint": trajectory.meta.get("fingerprint")}
        delta = supervised_direction(trajectory.h, scores, k)
        ranked = scores.sort(descending=True).values
        text = (f"p({digit}): top-{k} mean {float(ranked[:k].mean()):.3f}, "
                f"bottom-{k} mean {float(ranked[-k:].mean()):.3f}")
        return [Direction(delta, trajectory.timesteps.tolist(), meta)], text


NODE_CLASSES = (HSpacePCA, HSpaceSupervisedDirection, HSpaceDigitClassifierDirection)
DISPLAY_NAMES = {"HSpacePCA": "PCA Directions (hspace)", "HSpaceSupervisedDirection": "Supervised Direction (hspace)",
                 "HSpaceDigitClassifierDirection": "Digit Classifier Direction (hspace)"}
