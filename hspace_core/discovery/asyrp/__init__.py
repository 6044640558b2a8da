"""Asyrp (Kwon, Jeong & Uh, ICLR 2023; ALGORITHMS.md §1.4-1.7): the implicit function f_t that produces Δh_t,
its CLIP-guided training, the global Δh, and the choice of the editing and boosting intervals.

- :class:`DeltaBlock`: f_t(h, temb), 1×1 conv -> + Linear(SiLU(temb)) -> GroupNorm(32, eps 1e-6) -> SiLU ->
  1×1 conv, with temb from the frozen UNet's own time embedding (:func:`unet_time_embedding`).
- :class:`DirectionalCLIPLoss`: StyleGAN-NADA's directional loss, text direction averaged over the 79
  ImageNet templates, in Asyrp's form −log((1 + cos)/2). CLIP is pluggable: any pair of image/text
  encoders (:func:`clip_encoders` wraps a transformers ``CLIPModel``; :func:`load_clip` loads one from a
  local path or cached name; :func:`projected_encoders` pairs a vision model with a text model's projection).
- :func:`train_delta_block`: the training loop (one optimizer step per edited timestep, trajectory
  detached, SGD lr 0.5, StepLR(3, 0.1)); :func:`global_delta_h` averages f_t's output into a
  :class:`~hspace_core.direction.Direction`.
- :func:`editing_curves`, :func:`select_t_edit`, :func:`select_t_boost`: the distance curves along a DDIM
  inversion and Asyrp's rules for t_edit and t_boost.

Modules: :mod:`.block` (f_t), :mod:`.clip_loss`, :mod:`.training`, :mod:`.inference` (f_t per image, its file),
:mod:`.curves`.

Units: images and x0 predictions in [-1, 1]; x in k-diffusion form (``x = x_t / sqrt(alpha_bar)``).
"""
from .block import DeltaBlock, unet_time_embedding
from .clip_loss import (CLIP_MEAN, CLIP_STD, IMAGENET_TEMPLATES, DirectionalCLIPLoss, ImageEncoder, TextEncoder,
                        clip_encoders, clip_pixels, load_clip, projected_encoders)
from .curves import (Distance, EditingCurves, editing_curves, lpips_distance, pixel_rms_distance, select_t_boost,
                     select_t_edit)
from .inference import (DeltaFunction, f_t_controller, load_delta_block, sample_with_f_t, save_delta_block)
from .training import global_delta_h, train_delta_block

__all__ = ["DeltaBlock", "unet_time_embedding", "CLIP_MEAN", "CLIP_STD", "IMAGENET_TEMPLATES", "DirectionalCLIPLoss",
           "ImageEncoder", "TextEncoder", "clip_encoders", "clip_pixels", "load_clip", "projected_encoders",
           "Distance", "EditingCurves", "editing_curves",
           "lpips_distance", "pixel_rms_distance", "select_t_boost", "select_t_edit", "global_delta_h",
           "train_delta_block", "DeltaFunction", "f_t_controller", "load_delta_block", "sample_with_f_t",
           "save_delta_block"]
