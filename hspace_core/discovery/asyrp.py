"""Asyrp (Kwon, Jeong & Uh, ICLR 2023; ALGORITHMS.md §1.4-1.7): the implicit function f_t that produces Δh_t,
its CLIP-guided training, the global Δh, and the choice of the editing and boosting intervals.

- :class:`DeltaBlock`: f_t(h, temb), 1×1 conv -> + Linear(SiLU(temb)) -> GroupNorm(32, eps 1e-6) -> SiLU ->
  1×1 conv, with temb from the frozen UNet's own time embedding (:func:`unet_time_embedding`).
- :class:`DirectionalCLIPLoss`: StyleGAN-NADA's directional loss, text direction averaged over the 79
  ImageNet templates, in Asyrp's form −log((1 + cos)/2). CLIP is pluggable: any pair of image/text
  encoders (:func:`clip_encoders` wraps a transformers ``CLIPModel``; :func:`load_clip` loads one from a
  local path or cached name).
- :func:`train_delta_block`: the training loop (one optimizer step per edited timestep, trajectory
  detached, SGD lr 0.5, StepLR(3, 0.1)); :func:`global_delta_h` averages f_t's output into a
  :class:`~hspace_core.direction.Direction`.
- :func:`editing_curves`, :func:`select_t_edit`, :func:`select_t_boost`: the distance curves along a DDIM
  inversion and Asyrp's rules for t_edit and t_boost.

Units: images and x0 predictions in [-1, 1]; x in k-diffusion form (``x = x_t / sqrt(alpha_bar)``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..direction import Direction, check_finite
from ..errors import HSpaceError

Callback = Callable[[dict[str, Any]], None]
ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
TextEncoder = Callable[[list[str]], torch.Tensor]
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

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


# -- f_t --------------------------------------------------------------------------------------------
class DeltaBlock(nn.Module):
    """Asyrp's f_t for DDPM-style UNets: Δh_t = f(h_t, temb_t), with the shape of h.

    1×1 conv -> + Linear(SiLU(temb)) broadcast over space -> GroupNorm(groups, eps 1e-6) -> SiLU -> 1×1 conv.
    Default PyTorch initialisation (not zero), as in the official code. 3C² + 5C parameters when the
    time embedding has C channels: 788,992 for C = 512.
    """

    def __init__(self, channels: int, temb_channels: int, num_groups: int = 32, eps: float = 1e-6):
        super().__init__()
        if channels % num_groups:
            raise HSpaceError(f"GroupNorm needs channels divisible by num_groups: {channels} channels, "
                              f"{num_groups} groups")
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.temb_proj = nn.Linear(temb_channels, channels)
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps)
        self.conv_out = nn.Conv2d(channels, channels, kernel_size=1)

    @classmethod
    def for_unet(cls, unet: nn.Module, num_groups: int | None = None) -> "DeltaBlock":
        """A block sized for a diffusers UNet: h channels = last block_out_channels, temb = its embedding width.

        ``num_groups`` defaults to 32 when it divides the channels, else the UNet's ``norm_num_groups``.
        """
        channels = int(unet.config.block_out_channels[-1])
        temb_channels = int(unet.time_embedding.linear_2.out_features)
        if num_groups is None:
            num_groups = 32 if channels % 32 == 0 else int(unet.config.norm_num_groups)
        return cls(channels, temb_channels, num_groups)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if h.ndim != 4 or h.shape[1] != self.conv_in.in_channels:
            raise HSpaceError(f"h of shape [B, {self.conv_in.in_channels}, H, W] expected, got {tuple(h.shape)}")
        hidden = self.conv_in(h) + self.temb_proj(F.silu(temb))[:, :, None, None]
        return self.conv_out(F.silu(self.norm(hidden)))


def unet_time_embedding(unet: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The frozen UNet's own time embedding ``unet.time_embedding(unet.time_proj(t))`` (diffusers UNets with
    a positional ``time_proj``), ``[B, temb]``, without gradient."""
    if not hasattr(unet, "time_proj") or not hasattr(unet, "time_embedding"):
        raise HSpaceError(f"a diffusers UNet with time_proj and time_embedding expected, got {type(unet).__name__}")
    parameter = next(unet.parameters())
    t = torch.as_tensor(timesteps, dtype=torch.float32, device=parameter.device).flatten()
    with torch.no_grad():
        return unet.time_embedding(unet.time_proj(t).to(parameter.dtype))


# -- CLIP --------------------------------------------------------------------------------------------
def clip_encoders(model: nn.Module, tokenizer: Callable[[list[str]], Mapping[str, torch.Tensor]],
                  image_size: int | None = None) -> tuple[ImageEncoder, TextEncoder]:
    """(encode_image, encode_text) over a transformers ``CLIPModel`` (frozen here) and a tokenizer.

    ``encode_image`` takes images in [-1, 1], ``[B, C, H, W]`` (1 channel is repeated to 3), resizes them
    bicubically to the model's input size and applies CLIP's normalisation. ``tokenizer(texts)`` returns
    ``input_ids`` (and optionally ``attention_mask``) tensors.
    """
    model.eval().requires_grad_(False)
    size = int(image_size or model.config.vision_config.image_size)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    parameter = next(model.parameters())

    def features(output: Any) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def encode_image(images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise HSpaceError(f"images [B, 1 or 3, H, W] expected for CLIP, got {tuple(images.shape)}")
        pixels = (images.to(parameter) + 1) / 2
        pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
        pixels = (pixels - mean.to(pixels)) / std.to(pixels)
        return features(model.get_image_features(pixel_values=pixels))

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


# -- training ----------------------------------------------------------------------------------------
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
    count = int((sigmas[:-1] >= sigma_edit * (1 - 1e-6)).sum())
    if count == 0:
        raise HSpaceError(f"no step of the grid lies in the edit window: sigma_edit {sigma_edit:.4g} is above the "
                          f"largest sigma {float(sigmas[0]):.4g}")
    return count


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
    mean = (total / x_start.shape[0]).float()
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


# -- t_edit and t_boost ------------------------------------------------------------------------------
def _curve_points(curve: Mapping[float, float] | tuple[Sequence[float], Sequence[float]]) -> list[tuple[float, float]]:
    if isinstance(curve, Mapping):
        points = [(float(t), float(v)) for t, v in curve.items()]
    else:
        timesteps, values = curve
        timesteps, values = torch.as_tensor(timesteps).flatten().tolist(), torch.as_tensor(values).flatten().tolist()
        if len(timesteps) != len(values):
            raise HSpaceError(f"one value per timestep expected, got {len(timesteps)} timesteps and "
                              f"{len(values)} values")
        points = list(zip(map(float, timesteps), map(float, values)))
    if not points:
        raise HSpaceError("an empty curve came: at least one (timestep, value) pair is needed")
    if any(math.isnan(v) for _, v in points):
        raise HSpaceError("the curve contains NaN values")
    return sorted(points)


def _first_crossing(curve, threshold: float, what: str) -> float:
    for t, value in _curve_points(curve):
        if value >= threshold:
            return t
    raise HSpaceError(f"the {what} curve never reaches {threshold:.4g} (its maximum is "
                      f"{max(v for _, v in _curve_points(curve)):.4g}); choose the timestep by hand")


def select_t_edit(curve: Mapping[float, float] | tuple[Sequence[float], Sequence[float]], text_cos: float,
                  base: float = 0.33) -> float:
    """Asyrp's t_edit: the first timestep, going up from t = 0, where the editing-strength curve
    distance(P_t, x0) reaches ``base · text_cos`` (official ``set_t_edit_t_addnoise``; LPIPS-AlexNet units).

    ``curve`` maps timesteps to mean distances (a dict or a (timesteps, values) pair, any order). A lower text
    cosine (a larger semantic change) gives a lower threshold, so a longer editing interval.
    """
    return _first_crossing(curve, base * text_cos, "editing-strength")


def select_t_boost(curve_x: Mapping[float, float] | tuple[Sequence[float], Sequence[float]],
                   thr: float = 1.2) -> float:
    """Asyrp's t_boost: the first timestep, going up from t = 0, where distance(x_t, x0) reaches ``thr``
    (1.2 with ``--add_noise_from_xt``, as the README's scripts pass it)."""
    return _first_crossing(curve_x, thr, "quality-deficiency")


def pixel_rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The offline default distance: per-image root-mean-square difference of images in [-1, 1], ``[B]``.

    Not perceptual: Asyrp's thresholds (0.33, 1.2) are in LPIPS-AlexNet units and must be re-chosen for it
    (the curves themselves are still monotone in t and comparable across datasets).
    """
    return (a - b).double().pow(2).flatten(1).mean(1).sqrt()


def lpips_distance(net: str = "alex") -> Distance:
    """LPIPS (Zhang et al. 2018) from the optional ``lpips`` package, for images in [-1, 1].

    Needs that package and its backbone weights available offline; raises :class:`HSpaceError` otherwise.
    """
    try:
        import lpips
    except ImportError as error:
        raise HSpaceError("LPIPS needs the optional package lpips (pip install lpips); "
                          "pixel_rms_distance is the offline default") from error
    try:
        model = lpips.LPIPS(net=net, verbose=False).eval().requires_grad_(False)
    except Exception as error:  # the backbone download fails offline
        raise HSpaceError(f"could not build LPIPS-{net} (are its weights available offline?): {error}") from error

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(a.float(), b.float()).flatten().double()

    return distance


@dataclass
class EditingCurves:
    """Mean distance curves along a DDIM inversion, ascending in t (Asyrp ``compute_lpips_distance``).

    Attributes:
        timesteps: ``[S]``; x0_distance: mean distance(P_t, x0) (editing strength ξ_t);
        xt_distance: mean distance(x_t, x0) (quality deficiency γ_t, x_t the noisy image
        sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε); the ``*_std`` over images.
    """

    timesteps: torch.Tensor
    x0_distance: torch.Tensor
    xt_distance: torch.Tensor
    x0_distance_std: torch.Tensor
    xt_distance_std: torch.Tensor

    def t_edit(self, text_cos: float, base: float = 0.33) -> float:
        return select_t_edit((self.timesteps, self.x0_distance), text_cos, base)

    def t_boost(self, thr: float = 1.2) -> float:
        return select_t_boost((self.timesteps, self.xt_distance), thr)


def editing_curves(denoiser: Any, images: torch.Tensor, inversion_sigmas: torch.Tensor,
                   distance: Distance | None = None, batch_size: int = 8,
                   callback: Callback | None = None) -> EditingCurves:
    """Asyrp's distance curves: DDIM-invert ``images`` along the increasing ``inversion_sigmas`` and record, at
    every step, distance(P_t, x0) and distance(x_t, x0), averaged over the images.

    Asyrp uses 100 images, 1000 inversion steps and LPIPS-AlexNet (:func:`lpips_distance`); the default here
    is :func:`pixel_rms_distance`, which works offline. Uses the engine's ``invert_ddim``.

    Args:
        denoiser: a k-diffusion denoiser with ``schedule`` (a :class:`DiffusersDenoiser`).
        images: ``[N, C, H, W]`` in [-1, 1]; inversion_sigmas: increasing, positive.
        callback: ``{"batch", "batches"}`` before each batch; raise to stop.
    """
    from ..samplers import invert_ddim

    if images.ndim != 4 or images.shape[0] == 0:
        raise HSpaceError(f"images [N, C, H, W] expected, got {tuple(images.shape)}")
    distance = distance or pixel_rms_distance
    sigmas = torch.as_tensor(inversion_sigmas, dtype=torch.float64).flatten()
    x0_rows, xt_rows = [], []
    batches = list(images.split(batch_size))
    for b, batch in enumerate(batches):
        if callback is not None:
            callback({"batch": b, "batches": len(batches)})
        x0_step, xt_step = [], []

        def record(info: dict[str, Any]) -> None:
            sigma = float(info["sigma"])
            noisy = info["x"] / math.sqrt(1 + sigma ** 2)  # x_t = sqrt(alpha_bar) * x
            x0_step.append(distance(info["denoised"], batch))
            xt_step.append(distance(noisy, batch))

        invert_ddim(denoiser, batch, sigmas, callback=record, disable=True)
        x0_rows.append(torch.stack(x0_step, 1))
        xt_rows.append(torch.stack(xt_step, 1))
    x0_all, xt_all = torch.cat(x0_rows), torch.cat(xt_rows)  # [N, S-1]
    timesteps = denoiser.schedule.timestep(sigmas[:-1])
    spread = (lambda d: d.std(0)) if x0_all.shape[0] > 1 else (lambda d: torch.zeros_like(d[0]))
    return EditingCurves(timesteps, x0_all.mean(0), xt_all.mean(0), spread(x0_all), spread(xt_all))
