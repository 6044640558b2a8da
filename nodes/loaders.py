"""Loaders: pixel DDPMs as MODELs (nodes of ``pixel_nodes``) and the embedded model's held-out real digits."""
from __future__ import annotations

from typing import Any

import torch

from ..hspace_core.checks import check_choice, check_number
from ..hspace_core.embedded import load_heldout_digits
from ..hspace_core.errors import HSpaceError

from . import pixel_nodes
from .pixel_latents import latent_to_image

CATEGORY = "hspace/loaders"
DIGITS = ("any", *(str(d) for d in range(10)))


class HSpaceEmbeddedDigits:
    """Real 16x16 digits held out from the embedded model's training (50 per class), as an IMAGE batch: real images
    to invert and edit, or labelled sets (positives / negatives) for supervised directions, with nothing to download."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("real MNIST digits of the chosen class as IMAGEs",)
    SEARCH_ALIASES = ["mnist", "sample images"]
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "digit": (list(DIGITS), {"tooltip": "which class of digit, or any"}),
            "count": ("INT", {"default": 8, "min": 1, "max": 500, "tooltip": "how many images"}),
            "offset": ("INT", {"default": 0, "min": 0, "max": 499, "tooltip": "skip this many of the chosen class"}),
        }}

    def load(self, digit: str, count: int, offset: int) -> tuple[torch.Tensor]:
        check_choice(digit, "digit", DIGITS)
        check_number(count, "count", 1, integer=True)
        check_number(offset, "offset", 0, integer=True)
        images, labels = load_heldout_digits()
        if digit != "any":
            images = images[labels == int(digit)]
        chosen = images[offset:offset + count]
        if chosen.shape[0] == 0:
            raise HSpaceError(f"no digits left at offset {offset}: only {images.shape[0]} of class {digit!r}")
        return (latent_to_image(chosen),)


NODE_CLASSES = (pixel_nodes.HSpacePixelModelLoader, pixel_nodes.HSpaceImageToPixelLatent,
                pixel_nodes.HSpacePixelLatentToImage, pixel_nodes.HSpaceUnconditional, HSpaceEmbeddedDigits)
DISPLAY_NAMES = {**pixel_nodes.NODE_DISPLAY_NAME_MAPPINGS, "HSpaceEmbeddedDigits": "Embedded Digits (hspace)"}
