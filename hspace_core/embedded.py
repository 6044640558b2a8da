"""The default models shipped in ``hspace_core/default_model/``: a small unconditional pixel DDPM (a UNet) and a
small class-conditional flow-matching DiT on 16x16 MNIST digits, the digit classifier that judges their outputs,
and 500 held-out real digits.

Everything loads offline from package data; see ``default_model/MODEL_CARD.md`` for how it was trained
(``scripts/train_default_model.py``, ``scripts/train_evaluator.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import HSpaceError

if TYPE_CHECKING:
    from diffusers import DiTTransformer2DModel, UNet2DModel

    from .transformer_denoisers import DiffusersTransformerDenoiser

IMAGE_SIZE = 16
NUM_CLASSES = 10
# A classifier output counts as "confident" (the digit is legible) at or above this softmax probability.
CONFIDENCE_THRESHOLD = 0.9


def default_model_dir() -> Path:
    """The folder holding the shipped model (``unet/``, ``scheduler_config.json``, evaluator, digits)."""
    return Path(__file__).resolve().parent / "default_model"


def _require(path: Path) -> Path:
    if not path.exists():
        raise HSpaceError(f"the embedded default model file {path} is missing; expected it in the installed "
                          "package (reinstall hspace, or run scripts/train_default_model.py)")
    return path


def load_default_unet(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "UNet2DModel":
    """The shipped diffusers ``UNet2DModel`` (epsilon prediction, 16x16x1), in eval mode."""
    from diffusers import UNet2DModel  # imported here: diffusers is slow to import

    unet_dir = _require(default_model_dir() / "unet")
    unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=False)
    return unet.to(device=device).eval()


def load_default_dit(device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> "DiTTransformer2DModel":
    """The shipped diffusers ``DiTTransformer2DModel`` (rectified flow, velocity prediction, 16x16x1, 2x2 patches,
    classes 0..9 and the null class 10), in eval mode."""
    from diffusers import DiTTransformer2DModel

    dit_dir = _require(default_model_dir() / "dit")
    dit = DiTTransformer2DModel.from_pretrained(dit_dir, local_files_only=True, torch_dtype=dtype,
                                                low_cpu_mem_usage=False)
    return dit.to(device=device).eval()


def dit_denoiser(dit: "DiTTransformer2DModel", site: str | None = None,
                 digit: int | None = None) -> "DiffusersTransformerDenoiser":
    """A digit DiT as a denoiser: unconditional (its null class, as the UNet: the noise picks the digit) or
    conditioned on ``digit``; h at ``site`` (by default its middle block's output)."""
    from .transformer_denoisers import DiffusersTransformerDenoiser

    if digit is not None and not 0 <= int(digit) <= 9:
        raise HSpaceError(f"a digit 0..9 (or None, unconditional) expected, got {digit}")
    label = int(dit.config.num_embeds_ada_norm) if digit is None else int(digit)  # diffusers' null class: the last
    device = next(dit.parameters()).device
    return DiffusersTransformerDenoiser(dit, site=site, cond={"class_labels": torch.tensor([label], device=device)})


def default_dit_denoiser(device: str | torch.device = "cpu", site: str | None = None,
                         digit: int | None = None) -> "DiffusersTransformerDenoiser":
    """The shipped DiT as a denoiser (:func:`dit_denoiser`)."""
    return dit_denoiser(load_default_dit(device), site, digit)


def load_default_scheduler_config() -> dict:
    """The DDPM schedule the UNet was trained with (linear betas 1e-4..0.02, 1000 steps, epsilon)."""
    return json.loads(_require(default_model_dir() / "scheduler_config.json").read_text())


class DigitClassifier(nn.Module):
    """A small CNN for 16x16 digits in [-1, 1]: ``[N,1,16,16] -> logits [N,10]``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                                  nn.Linear(128, NUM_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.no_grad()
    def digit_probability(self, images: torch.Tensor, digit: int) -> torch.Tensor:
        """``[N]``: the softmax probability of ``digit`` for embedded-model images ``[N, 1, 16, 16]`` in [-1, 1]."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise HSpaceError(f"embedded-model images [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}] expected, got shape "
                              f"{list(images.shape)}")
        if not 0 <= int(digit) <= 9:
            raise HSpaceError(f"a digit 0..9 expected, got {digit}")
        return self(images.float()).softmax(dim=1)[:, int(digit)]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels int64 [N], confidence float [N])``: the argmax class and its softmax probability."""
        probabilities = self(images).softmax(dim=1)
        confidence, labels = probabilities.max(dim=1)
        return labels, confidence


def load_evaluator(device: str | torch.device = "cpu") -> DigitClassifier:
    """The shipped digit classifier (trained apart from the diffusion model), in eval mode."""
    classifier = DigitClassifier()
    classifier.load_state_dict(load_file(_require(default_model_dir() / "evaluator.safetensors")))
    return classifier.to(device).eval()


def load_heldout_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 500 held-out real digits (50 per class): ``(images float [-1,1] [500,1,16,16], labels int64 [500])``."""
    tensors = load_file(_require(default_model_dir() / "heldout_digits.safetensors"))
    images = tensors["images"].float() / 127.5 - 1.0
    return images, tensors["labels"].long()
