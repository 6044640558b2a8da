"""Measuring a direction: what it changes besides its target (embedded digit models only)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..hspace_core.checks import check_choice, check_number
from ..hspace_core.evaluation import ATTRIBUTES, embedded_model_of, evaluate_on_model

from . import _comfy, _inputs
from ._types import DirectionSet, single


class HSpaceEvaluateDirection:
    """Measure what a direction changes, on an embedded digit model only (the UNet, or the DiT for a direction made
    at a transformer block; the shipped digit classifier judges their 16x16 digits): held-out seeds are edited at
    -2, -1, +1, +2; per strength, the share of samples whose target attribute moved the intended way, its change
    against random directions of the same norm, the class kept, the change of every other attribute, and the
    linearity (effect at x2 over x1). The direction must come from h of an embedded model (e.g. Capture h on one
    of the embedded models of Load Pixel Model)."""

    DESCRIPTION = __doc__
    CATEGORY = "hspace/directions"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "chart")
    FUNCTION = "evaluate"
    OUTPUT_NODE = True  # shows its chart even with nothing connected

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "direction": _inputs.direction("a direction of the embedded digit model"),
            "target": (list(ATTRIBUTES), {"tooltip": "the attribute the direction should change"}),
            "samples": ("INT", {"default": 64, "min": 2, "max": 4096,
                                "tooltip": "held-out samples edited (each costs 9 runs with 2 random directions)"}),
            "first_seed": ("INT", {"default": 100000, "min": 0, "max": 2 ** 31 - 1,
                                   "tooltip": "seeds first_seed.. are edited: keep them apart from the fitting seeds"}),
            "steps": ("INT", {"default": 20, "min": 2, "max": 1000, "tooltip": "sampling steps of the edited runs (DDIM on the UNet, flow on the DiT)"}),
            "random_directions": ("INT", {"default": 2, "min": 1, "max": 16,
                                          "tooltip": "random directions of the same norm to compare with"}),
            "allow_foreign": ("BOOLEAN", {"default": False,
                                          "tooltip": "evaluate a direction recorded on another model anyway"}),
        }, "optional": {
            "keep_class": ("BOOLEAN", {"default": False,
                                       "tooltip": "edit with the class-keeping correction: at every edited step each "
                                                  "sample's shift loses the part that would lower the classifier's "
                                                  "probability of its class (about 3x the time)"}),
        }}

    def evaluate(self, direction: DirectionSet, target: str, samples: int, first_seed: int, steps: int,
                 random_directions: int, allow_foreign: bool, keep_class: bool | None = None) -> dict[str, Any]:
        check_choice(target, "target", list(ATTRIBUTES))
        check_number(steps, "steps", 2, integer=True)
        direction = single(direction)
        result = evaluate_on_model(direction, target, embedded_model_of(direction), samples=samples,
                                   first_seed=first_seed, steps=steps, random_directions=random_directions,
                                   allow_foreign=allow_foreign, keep_class=bool(keep_class))
        chart = torch.from_numpy(np.asarray(result.chart().convert("RGB"), dtype=np.float32) / 255.0)[None]
        report = result.report()
        return {"ui": {"text": [report], "images": _comfy.preview_images(chart)}, "result": (report, chart)}


NODE_CLASSES = (HSpaceEvaluateDirection,)
DISPLAY_NAMES = {"HSpaceEvaluateDirection": "Evaluate Direction (hspace)"}
