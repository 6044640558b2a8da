"""Asyrp's default edit at inference: the trained f_t evaluated on each image's own h_t at every edited step
(``Δh_t = f_t(h_t, temb_t)``), through the bottleneck controller; and f_t's file (safetensors: the block's weights,
its shape, the model fingerprint and the training settings). The averaged global Δh (:func:`global_delta_h`) is the
other mode."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...bottleneck import Bottleneck, FunctionEdit
from ...direction import check_fingerprint
from ...errors import HSpaceError
from ...fileio import atomic_save, load_record
from ...samplers import sample_asyrp
from .block import DeltaBlock, unet_time_embedding

F_T_KIND = "asyrp_f_t"


class DeltaFunction:
    """f_t as a bottleneck function: ``(h, t) -> block(h, temb(t))`` with the frozen UNet's time embedding, on
    h's device and in the block's dtype, without gradient."""

    def __init__(self, block: DeltaBlock, unet: nn.Module):
        self.block, self.unet = block.eval(), unet

    def __call__(self, h: torch.Tensor, timestep: float) -> torch.Tensor:
        self.block.to(h.device)  # the model may have moved since (ComfyUI loads it to the GPU to sample)
        parameter = next(self.block.parameters())
        temb = unet_time_embedding(self.unet, torch.full((h.shape[0],), float(timestep)))
        with torch.no_grad():
            return self.block(h.to(parameter), temb.to(parameter))


def save_delta_block(block: DeltaBlock, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write f_t: its weights, its shape and ``meta`` (the model ``fingerprint``, the training settings and the
    edit window ``edit_window`` = [t_edit, T - 1])."""
    shape = {"channels": block.conv_in.in_channels, "temb_channels": block.temb_proj.in_features,
             "num_groups": block.norm.num_groups}
    return atomic_save(dict(block.state_dict()), path, F_T_KIND, {**meta, **shape})


def load_delta_block(path: str | os.PathLike, unet: nn.Module, fingerprint: dict[str, Any] | None = None,
                     allow_foreign: bool = False) -> tuple[DeltaBlock, dict[str, Any]]:
    """Read f_t for ``unet`` (on its device and in its dtype); refuse one trained on another model unless allowed
    (``fingerprint``: the model's). Returns the block and the file's metadata."""
    path = Path(path)
    meta, tensors = load_record(path, F_T_KIND, "train and save the f_t again")
    check_fingerprint(meta.get("fingerprint"), fingerprint, f"the f_t in {path.name}", allow_foreign)
    try:
        block = DeltaBlock(int(meta["channels"]), int(meta["temb_channels"]), int(meta["num_groups"]))
    except (KeyError, ValueError, TypeError) as error:
        raise HSpaceError(f"{path.name} lacks f_t's shape (channels, temb_channels, num_groups): {error}") from None
    expected = int(unet.config.block_out_channels[-1])
    if block.conv_in.in_channels != expected:
        raise HSpaceError(f"{path.name} holds an f_t for h with {block.conv_in.in_channels} channels; this model's h "
                          f"has {expected}")
    if set(tensors) != set(block.state_dict()):
        raise HSpaceError(f"{path.name} holds the tensors {sorted(tensors)}, not those of an f_t block")
    block.load_state_dict(tensors)
    parameter = next(unet.parameters())
    return block.to(parameter.device, parameter.dtype).eval(), meta


def f_t_controller(block: DeltaBlock, unet: nn.Module, t_edit: float, num_train_timesteps: int = 1000,
                   strength: float = 1.0, rows: str = "cond", n_train_steps: int | None = None) -> Bottleneck:
    """A bottleneck controller that shifts each sample's h by ``strength · f_t(h_t, t)`` for t >= t_edit, times
    N_train / N_test under the asymmetric step (Asyrp's scaling; ``n_train_steps``: the training grid's steps)."""
    return Bottleneck(window=(float(t_edit), float(num_train_timesteps - 1)), rows=rows,
                      functions=[FunctionEdit(DeltaFunction(block, unet), strength, n_train_steps)])


@torch.no_grad()
def sample_with_f_t(denoiser: Any, block: DeltaBlock, x_T: torch.Tensor, sigmas: torch.Tensor, sigma_edit: float,
                    strength: float = 1.0, mode: str = "asymmetric", n_train_steps: int | None = None,
                    **options: Any) -> torch.Tensor:
    """Asyrp's per-image edit with the library's denoiser: the asymmetric process on t >= t_edit with Δh_t =
    f_t(h_t) of each sample, times ``n_train_steps / (len(sigmas) - 1)`` (Asyrp's N_train / N_test; None: the
    run's own step count, no factor); ``options`` go to :func:`~hspace_core.samplers.sample_asyrp`."""
    t_edit = float(denoiser.schedule.timestep(torch.tensor(sigma_edit, dtype=torch.float64)))
    controller = f_t_controller(block, denoiser.unet, t_edit, denoiser.schedule.num_train_timesteps, strength,
                                n_train_steps=n_train_steps)
    with denoiser.attached(controller):
        return sample_asyrp(denoiser, x_T, sigmas, mode=mode, sigma_edit=sigma_edit, disable=True, **options)
