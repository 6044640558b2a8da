"""The pixel-DDPM nodes: load one as a MODEL, turn its latents into IMAGEs and back, an empty CONDITIONING."""
from __future__ import annotations

import os
from typing import Any

import torch

from ..hspace_core.errors import HSpaceError

from . import _comfy
from ._display import enlarged
from .pixel_latents import image_to_latent, latent_to_image
from .pixel_model import EMBEDDED, EMBEDDED_DIT, load_pixel_model

PIXEL_CATEGORY = "hspace/pixel"


def _diffusers_choices() -> list[str]:
    folder_paths = _comfy.optional("folder_paths")
    if folder_paths is None:
        return [EMBEDDED, EMBEDDED_DIT]
    names = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            names += sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return [EMBEDDED, EMBEDDED_DIT, *names]


def _resolve_choice(name: str) -> str:
    if name in (EMBEDDED, EMBEDDED_DIT) or os.path.isdir(name):
        return name
    folder_paths = _comfy.require("folder_paths")
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise HSpaceError(f"no diffusers folder named {name!r} under models/diffusers")


class HSpacePixelModelLoader:
    """Load a pixel-space model as a MODEL for KSampler, SamplerCustom and the hspace nodes: a DDPM (diffusers
    UNet2DModel), or the embedded flow-matching DiT (unconditional; sample it with euler and the simple scheduler)."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("the pixel model as a ComfyUI MODEL (KSampler and the hspace nodes take it)",)
    SEARCH_ALIASES = ["ddpm", "diffusers unet", "mnist model", "celeba", "dit", "flow matching"]
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model_name": (_diffusers_choices(), {
            "tooltip": "the embedded 16x16 MNIST DDPM (a UNet) or flow-matching DiT (a transformer, hooked at a block "
                       "output), or a DDPM folder under models/diffusers"})}}

    def load(self, model_name: str) -> tuple[Any]:
        return (load_pixel_model(_resolve_choice(model_name)),)


class HSpacePixelLatentToImage:
    """Turn the LATENT of a pixel-space model into an IMAGE (no VAE: the latent is the image in [-1, 1])."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("the latent as an IMAGE (at the model's size; shown enlarged on the node)",)
    SEARCH_ALIASES = ["decode pixel latent"]
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT", {"tooltip": "pixel-space latent of a pixel model (its x0)"})}}

    def convert(self, samples: dict[str, Any]) -> dict[str, Any]:
        image = latent_to_image(samples["samples"])
        # shown enlarged (nearest neighbour) on the node; the IMAGE output keeps the model's size
        return {"ui": {"images": _comfy.preview_images(enlarged(image))}, "result": (image,)}


class HSpaceImageToPixelLatent:
    """Turn an IMAGE into the LATENT of a pixel-space model (for inversion and img2img)."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("the IMAGE as the pixel model's LATENT, for inversion or img2img",)
    SEARCH_ALIASES = ["encode pixel latent"]
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {"tooltip": "images to put in the pixel model's space ([-1, 1])"}),
                             "model": ("MODEL", {"tooltip": "the pixel model whose channel count the latent takes"})}}

    def convert(self, image: torch.Tensor, model: Any) -> tuple[dict[str, torch.Tensor]]:
        channels = int(model.get_model_object("latent_format").latent_channels)
        return ({"samples": image_to_latent(image, channels)},)


class HSpaceUnconditional:
    """An empty CONDITIONING for unconditional (pixel-space) models, to feed KSampler's positive and negative."""

    DESCRIPTION = __doc__
    CATEGORY = PIXEL_CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("an empty CONDITIONING for positive and negative of unconditional models",)
    SEARCH_ALIASES = ["empty conditioning", "no prompt"]
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def make(self) -> tuple[list]:
        return ([[torch.zeros(1, 1, 1), {}]],)


NODE_CLASS_MAPPINGS = {
    "HSpacePixelModelLoader": HSpacePixelModelLoader,
    "HSpacePixelLatentToImage": HSpacePixelLatentToImage,
    "HSpaceImageToPixelLatent": HSpaceImageToPixelLatent,
    "HSpaceUnconditional": HSpaceUnconditional,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "HSpacePixelModelLoader": "Load Pixel Model (hspace)",
    "HSpacePixelLatentToImage": "Pixel Latent to Image (hspace)",
    "HSpaceImageToPixelLatent": "Image to Pixel Latent (hspace)",
    "HSpaceUnconditional": "Unconditional (hspace)",
}
