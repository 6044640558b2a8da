"""Asyrp's directional CLIP loss (StyleGAN-NADA's, in Asyrp's form −log((1 + cos)/2)), with pluggable encoders:
any pair of image/text encoders; :func:`clip_encoders` wraps a transformers ``CLIPModel``, :func:`load_clip` loads
one from a local path or cached name, :func:`projected_encoders` pairs a vision model with a text model's pooled
output and its text projection (ComfyUI's CLIP_VISION and CLIP)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HSpaceError

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
TextEncoder = Callable[[list[str]], torch.Tensor]

# The CLIP ImageNet prompt templates (Radford et al. 2021) less "a photo of many {}.", as StyleGAN-NADA and
# Asyrp use them: 79 templates.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images: torch.Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Images in [-1, 1], ``[B, 1 or 3, H, W]``, as CLIP's input: 3 channels, resized bicubically to ``size``
    (differentiably: no rounding to 8 bits), normalised by CLIP's mean and std."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise HSpaceError(f"images [B, 1 or 3, H, W] expected for CLIP, got {tuple(images.shape)}")
    pixels = (images + 1) / 2
    pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
    pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1).to(pixels)) / torch.tensor(std).view(1, 3, 1, 1).to(pixels)


def projected_encoders(embed_image: Callable[[torch.Tensor], torch.Tensor], image_size: int,
                       pooled_text: Callable[[list[str]], torch.Tensor], text_projection: torch.Tensor,
                       mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
                       ) -> tuple[ImageEncoder, TextEncoder]:
    """(encode_image, encode_text) from a vision model's projected embedding (``embed_image(clip_pixels)``) and a
    text model's unprojected pooled output mapped by its ``text_projection`` ``[D, hidden]`` into the same D-dim
    space, as CLIP's ``get_text_features`` does."""
    projection = text_projection.detach().float()

    def encode_image(images: torch.Tensor) -> torch.Tensor:
        return embed_image(clip_pixels(images, image_size, mean, std))

    def encode_text(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            pooled = pooled_text(list(texts)).float()
            return pooled @ projection.to(pooled.device).T

    return encode_image, encode_text


def clip_encoders(model: nn.Module, tokenizer: Callable[[list[str]], Mapping[str, torch.Tensor]],
                  image_size: int | None = None) -> tuple[ImageEncoder, TextEncoder]:
    """(encode_image, encode_text) over a transformers ``CLIPModel`` (frozen here) and a tokenizer.

    ``encode_image`` takes images in [-1, 1], ``[B, C, H, W]`` (1 channel is repeated to 3), resizes them
    bicubically to the model's input size and applies CLIP's normalisation. ``tokenizer(texts)`` returns
    ``input_ids`` (and optionally ``attention_mask``) tensors.
    """
    model.eval().requires_grad_(False)
    size = int(image_size or model.config.vision_config.image_size)
    parameter = next(model.parameters())

    def features(output: Any) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def encode_image(images: torch.Tensor) -> torch.Tensor:
        return features(model.get_image_features(pixel_values=clip_pixels(images.to(parameter), size)))

    def encode_text(texts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(parameter.device) for k, v in tokenizer(list(texts)).items()
                  if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            return features(model.get_text_features(**tokens))

    return encode_image, encode_text


def load_clip(name_or_path: str = "openai/clip-vit-base-patch16",
              device: str | torch.device = "cpu") -> tuple[ImageEncoder, TextEncoder]:
    """CLIP encoders from a local folder or an already-cached model name (never downloads). Needs the
    optional dependency ``transformers``. Asyrp uses ViT-B/16."""
    try:
        from transformers import CLIPModel, CLIPTokenizer
    except ImportError as error:
        raise HSpaceError("the CLIP loss needs the optional package transformers (pip install transformers)") \
            from error
    try:
        model = CLIPModel.from_pretrained(name_or_path, local_files_only=True).to(device)
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except OSError as error:
        raise HSpaceError(f"no CLIP weights found at {name_or_path!r}: expected a folder in transformers' layout "
                          "holding config.json, model.safetensors (or pytorch_model.bin), vocab.json, merges.txt and "
                          "tokenizer_config.json (e.g. ComfyUI/models/clip/clip-vit-base-patch16, from "
                          "huggingface.co/openai/clip-vit-base-patch16), or that model's name when it is already "
                          "in the Hugging Face cache (~/.cache/huggingface/hub); nothing is downloaded") from error
    return clip_encoders(model, lambda texts: tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))


class DirectionalCLIPLoss(nn.Module):
    """Asyrp's CLIP loss: L = −log((2 − L_dir)/2) = −log((1 + cos_dir)/2), per image, averaged.

    cos_dir = cos(E_I(edited) − E_I(source), ΔT), with unit-normalised image features and the text direction
    ΔT = normalise(mean over templates of (E_T(template(target)) − E_T(template(source)))), each text
    feature unit-normalised (StyleGAN-NADA, Gal et al. 2022). ``text_cosine`` is the cosine between the
    raw prompts' text features, which weights the L1 term and sets t_edit.
    """

    def __init__(self, encode_image: ImageEncoder, encode_text: TextEncoder, source_text: str, target_text: str,
                 templates: Sequence[str] = IMAGENET_TEMPLATES):
        super().__init__()
        if not templates or any("{}" not in t for t in templates):
            raise HSpaceError("prompt templates with a '{}' placeholder expected")
        self.encode_image = encode_image
        self.source_text, self.target_text = source_text, target_text
        with torch.no_grad():
            source = F.normalize(encode_text([t.format(source_text) for t in templates]).float(), dim=-1)
            target = F.normalize(encode_text([t.format(target_text) for t in templates]).float(), dim=-1)
            raw = encode_text([source_text, target_text]).float()
        self.register_buffer("text_direction", F.normalize((target - source).mean(0), dim=0))
        self.text_cosine = float(F.cosine_similarity(raw[0], raw[1], dim=0))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode_image(images).float(), dim=-1)

    def forward(self, edited: torch.Tensor, source: torch.Tensor | None = None,
                source_features: torch.Tensor | None = None) -> torch.Tensor:
        """The loss for edited images against their sources (or the sources' precomputed features)."""
        if source_features is None:
            if source is None:
                raise HSpaceError("the CLIP direction needs the source images or their features")
            with torch.no_grad():
                source_features = self.image_features(source)
        direction = F.normalize(self.image_features(edited) - source_features, dim=-1)
        cosine = direction @ self.text_direction.to(direction)
        return -torch.log((1 + cosine).clamp(min=1e-12) / 2).mean()


