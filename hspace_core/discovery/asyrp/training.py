"""Asyrp's CLIP-guided training of f_t (``run_training`` of the official code) and the global Δh averaged from it."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ...direction import Direction, check_finite
from ...errors import HSpaceError
from ...schedule import at_or_above
from .block import DeltaBlock, unet_time_embedding
from .clip_loss import DirectionalCLIPLoss

Callback = Callable[[dict[str, Any]], None]


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` without gradients for the duration (restored afterwards)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _edited_steps(sigmas: torch.Tensor, sigma_edit: float) -> int:
    """The number of steps of the grid inside the edit window (sigma >= sigma_edit)."""
    count = sum(at_or_above(s, sigma_edit) for s in sigmas[:-1].tolist())
    if count == 0:
        raise HSpaceError(f"no step of the grid lies in the edit window: sigma_edit {sigma_edit:.4g} is above the "
                          f"largest sigma {float(sigmas[0]):.4g}")
    return count


def _follow_model(denoiser: Any, block: DeltaBlock, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Move the block to the UNet's device and dtype (in place) and the tensors to its device."""
    parameter = next(denoiser.unet.parameters())
    block.to(parameter.device, parameter.dtype)
    return [None if t is None else t.to(parameter.device) for t in tensors]


def _check_grid(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 2 or not (sigmas[1:] < sigmas[:-1]).all():
        raise HSpaceError(f"a decreasing generation sigma schedule expected, got {sigmas.tolist()}")
    if x.ndim != 4:
        raise HSpaceError(f"starting latents [N, C, H, W] expected, got {tuple(x.shape)}")
    check_finite(x, "the starting latents")
    return sigmas


def _edited_prediction(denoiser: Any, block: DeltaBlock, x: torch.Tensor, sigma: float,
                       temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P^edit = x − σ ε(h + Δh), the unshifted ε(h), Δh = f(h, temb)) at x, σ; gradients reach f only."""
    with torch.no_grad():
        h = denoiser.encode(x, sigma)
        eps_plain = denoiser.decode_from(x, sigma, h)
    delta = block(h, temb.to(h))
    return x - sigma * denoiser.decode_from(x, sigma, h + delta), eps_plain, delta


def train_delta_block(denoiser: Any, block: DeltaBlock, x_start: torch.Tensor, sigmas: torch.Tensor,
                      sigma_edit: float, clip_loss: DirectionalCLIPLoss, images: torch.Tensor | None = None,
                      source: str = "image", epochs: int = 1, lr: float = 0.5, lambda_clip: float = 1.0,
                      lambda_l1: float = 3.0, lr_step: int = 3, lr_gamma: float = 0.1,
                      callback: Callback | None = None) -> list[dict[str, float]]:
    """Train f_t with Asyrp's CLIP-guided loop (``run_training`` of the official code), batch size 1.

    For every image and every grid step with sigma >= ``sigma_edit`` (the edit window [T, t_edit]), from the
    **detached** edited x_t:

    1. h = encode(x_t); Δh = f(h, temb_t); ε̃ = decode(h + Δh), ε = decode(h); P^edit = x_t − σ ε̃;
    2. the unedited reference trajectory (no gradient) gives P^orig;
    3. loss = λ_CLIP · L_CLIP(P^edit, source) + λ_L1 · cos(src, trg) · mean|P^edit − P^orig|;
    4. one optimizer step; then x_t' = P^edit + σ' ε (the asymmetric DDIM step, eta 0) and the
       reference advances with plain DDIM.

    The gradient reaches only the block (the UNet is frozen for the duration). SGD (no momentum), StepLR
    every ``lr_step`` epochs.

    Args:
        denoiser: offers ``encode``, ``decode_from``, ``eps``, ``schedule`` and ``unet``
            (:class:`~hspace_core.denoisers.DiffusersDenoiser`).
        x_start: ``[N, C, H, W]`` x at ``sigmas[0]`` (DDIM-inverted images or noise).
        sigmas: the decreasing training grid (Asyrp: 40 steps, t0 = 999).
        images: ``[N, C, H, W]`` the input images, the CLIP source with ``source="image"`` (the code).
        source: ``"image"`` or ``"reference"`` (P_t of the unedited trajectory, the paper's formula).
        callback: ``{"epoch", "image", "step", "sigma", "loss", "clip", "l1", "lr"}`` after every optimizer
            step; raise to stop.

    Returns:
        the callback records, one per optimizer step.
    """
    sigmas = _check_grid(x_start, sigmas)
    if source not in ("image", "reference"):
        raise HSpaceError(f"source must be 'image' or 'reference', got {source!r}")
    if source == "image" and (images is None or images.ndim != 4 or images.shape[0] != x_start.shape[0]):
        raise HSpaceError(f"source='image' needs the input images [N, C, H, W], one per starting latent "
                          f"({x_start.shape[0]}), got {None if images is None else tuple(images.shape)}")
    steps = _edited_steps(sigmas, sigma_edit)
    x_start, images = _follow_model(denoiser, block, x_start, images)
    timesteps = denoiser.schedule.timestep(sigmas[:steps])
    temb = unet_time_embedding(denoiser.unet, timesteps)
    optimizer = torch.optim.SGD(block.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step, gamma=lr_gamma)
    history: list[dict[str, float]] = []
    block.train()
    with _frozen(denoiser.unet):
        for epoch in range(epochs):
            for index in range(x_start.shape[0]):
                x_edit = x_orig = x_start[index:index + 1]
                source_features = None
                if source == "image":
                    with torch.no_grad():
                        source_features = clip_loss.image_features(images[index:index + 1])
                for i in range(steps):
                    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
                    x0_edit, eps_plain, _ = _edited_prediction(denoiser, block, x_edit.detach(), sigma, temb[i:i + 1])
                    with torch.no_grad():
                        x0_orig = x_orig - sigma * denoiser.eps(x_orig, sigma)
                        if source == "reference":
                            source_features = clip_loss.image_features(x0_orig)
                    clip_term = clip_loss(x0_edit, source_features=source_features)
                    l1_term = (x0_edit - x0_orig).abs().mean()
                    loss = lambda_clip * clip_term + lambda_l1 * clip_loss.text_cosine * l1_term
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    record = {"epoch": epoch, "image": index, "step": i, "sigma": sigma,
                              "loss": float(loss.detach()), "clip": float(clip_term.detach()),
                              "l1": float(l1_term.detach()), "lr": optimizer.param_groups[0]["lr"]}
                    history.append(record)
                    if callback is not None:
                        callback(record)
                    x_edit = x0_edit.detach() + sigma_next * eps_plain  # the asymmetric step, eta 0
                    x_orig = x0_orig + sigma_next * (x_orig - x0_orig) / sigma
            scheduler.step()
    block.eval()
    return history


@torch.no_grad()
def global_delta_h(denoiser: Any, block: DeltaBlock, x_start: torch.Tensor, sigmas: torch.Tensor,
                   sigma_edit: float, per_timestep: bool = False,
                   callback: Callback | None = None) -> Direction:
    """Asyrp's global direction (``--num_mean_of_delta_hs``): f_t's Δh_t averaged over images, then over t.

    Each image runs the asymmetric process through the edit window with its own Δh_t = f(h_t, temb_t);
    Δh_t is averaged over the images per step, and (unless ``per_timestep``) over the edited steps into one
    tensor used at every t >= t_edit. The result is a :class:`Direction` (global ``[C, H, W]`` or keyed by
    the edited timesteps), with ``meta["edit_window_sigma"] = sigma_edit``.

    Args:
        callback: ``{"image", "images"}`` before each image; raise to stop.
    """
    sigmas = _check_grid(x_start, sigmas)
    steps = _edited_steps(sigmas, sigma_edit)
    (x_start,) = _follow_model(denoiser, block, x_start)
    timesteps = denoiser.schedule.timestep(sigmas[:steps])
    temb = unet_time_embedding(denoiser.unet, timesteps)
    block.eval()
    total = None
    for index in range(x_start.shape[0]):
        if callback is not None:
            callback({"image": index, "images": x_start.shape[0]})
        x = x_start[index:index + 1]
        deltas = []
        for i in range(steps):
            x0_edit, eps_plain, delta = _edited_prediction(denoiser, block, x, float(sigmas[i]), temb[i:i + 1])
            x = x0_edit + float(sigmas[i + 1]) * eps_plain
            deltas.append(delta[0].double())
        stacked = torch.stack(deltas)
        total = stacked if total is None else total + stacked
    mean = (total / x_start.shape[0]).float().cpu()
    meta = {"method": "asyrp", "num_images": x_start.shape[0], "edit_window_sigma": float(sigma_edit),
            "units": "raw", "n_train_steps": len(sigmas) - 1}
    schedule = getattr(denoiser, "schedule", None)
    if schedule is not None:
        meta["edit_window"] = [round(float(schedule.timestep(sigma_edit)), 3), schedule.num_train_timesteps - 1]
    if callable(getattr(denoiser, "fingerprint", None)):
        meta["fingerprint"] = denoiser.fingerprint()
    if per_timestep:
        return Direction(mean, [float(t) for t in timesteps], meta)
    return Direction(mean.mean(0), None, meta)


