"""Checks of user input, shared by the library, the nodes and the command line.

Each check raises :class:`~hspace_core.errors.HSpaceError` with one line naming what was expected and what
came, and is meant to run at an entry point, before any long work starts.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import HSpaceError

# Pixels may overshoot [-1, 1] (or [0, 1]) by this much (resampling, rounding) before they count as another scale.
PIXEL_TOLERANCE = 1e-3
UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


def one_line(error: BaseException, limit: int = 300) -> str:
    """A library's (possibly multi-line) error message as one line, for wrapping in an HSpaceError."""
    return " ".join(str(error).split())[:limit]


# -- numbers and mode strings ------------------------------------------------------------------------------------

FINITE_CHECK_ELEMENTS = 2 ** 22
"""Elements ``check_finite`` tests at a time: ``isfinite`` makes temporaries of about twice its input's size."""


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    rows = max(1, FINITE_CHECK_ELEMENTS // max(1, tensor[0].numel())) if tensor.ndim and len(tensor) else 1
    parts = tensor.split(rows) if tensor.ndim else (tensor,)
    if not all(torch.isfinite(part).all() for part in parts):
        raise HSpaceError(f"{what} contains NaN or Inf values")
    return tensor


def check_number(value: Any, name: str, low: float | None = None, high: float | None = None,
                 integer: bool = False) -> float | int:
    """A finite real number (an integer if ``integer``) in ``[low, high]`` (either bound may be None)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    wanted = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integer and not float(value).is_integer()):
        raise HSpaceError(f"{name}: {wanted} expected, got {value!r}")
    if not math.isfinite(value):
        raise HSpaceError(f"{name}: a finite {wanted[2:] if integer else 'number'} expected, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"in [{low}, {high}]" if low is not None and high is not None
                  else f">= {low}" if low is not None else f"<= {high}")
        raise HSpaceError(f"{name}: {wanted} {bounds} expected, got {value}")
    return int(value) if integer else value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``, exactly (no silent fallback to another mode)."""
    if value not in choices:
        raise HSpaceError(f"{name}: one of {list(choices)} expected, got {value!r}")
    return value


# -- images, latents ---------------------------------------------------------------------------------------------

def check_batch(x: Any, what: str, channels: int | None = None, size: Sequence[int] | None = None,
                value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """A non-empty, finite, real floating-point batch ``[N, C, H, W]``, with the model's channels and size
    (when given) and, for images, values in ``value_range``."""
    if not isinstance(x, torch.Tensor):
        raise HSpaceError(f"{what}: a tensor [N, C, H, W] expected, got {type(x).__name__}")
    if not x.is_floating_point():
        raise HSpaceError(f"{what}: real floating-point values expected, got dtype {x.dtype}")
    expected = f"[N, {channels or 'C'}, {size[0] if size else 'H'}, {size[1] if size else 'W'}]"
    if x.ndim == 3:
        raise HSpaceError(f"{what}: a batch {expected} expected, got shape {list(x.shape)} (no batch axis: "
                          "add one with x[None])")
    if x.ndim != 4:
        raise HSpaceError(f"{what}: a batch {expected} expected, got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise HSpaceError(f"{what}: a batch {expected} of at least one item expected, got an empty batch")
    if channels is not None and x.shape[1] != channels:
        hint = " (a Stable Diffusion latent? this is a pixel model)" if x.shape[1] == 4 and channels in (1, 3) else ""
        raise HSpaceError(f"{what}: {channels} channels expected for this model, got {x.shape[1]}{hint}")
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise HSpaceError(f"{what}: {size[0]}x{size[1]} pixels expected for this model, got "
                          f"{x.shape[2]}x{x.shape[3]}")
    check_finite(x, what)
    if value_range is not None:
        low, high = float(x.min()), float(x.max())
        if low < value_range[0] - PIXEL_TOLERANCE or high > value_range[1] + PIXEL_TOLERANCE:
            hint = " (an image in [0, 255]? divide by 127.5 and subtract 1)" if high > 2 and value_range[1] == 1 \
                and value_range[0] == -1 else ""
            raise HSpaceError(f"{what}: values in [{value_range[0]:g}, {value_range[1]:g}] expected, got values in "
                              f"[{low:.4g}, {high:.4g}]{hint}")
    return x


# -- directions and edits ----------------------------------------------------------------------------------------

def check_delta(delta: torch.Tensor) -> torch.Tensor:
    """A direction's tensor: real-valued and not empty (checked before it is cast to float32)."""
    if delta.is_complex():
        raise HSpaceError(f"a real-valued direction expected, got dtype {delta.dtype}")
    if delta.numel() == 0:
        raise HSpaceError(f"a non-empty direction expected, got shape {list(delta.shape)}")
    return delta


def check_timesteps(timesteps: Sequence[float], what: str = "the direction's timesteps") -> tuple[float, ...]:
    """Finite, distinct model timesteps (two slices under one key would make the key ambiguous)."""
    values = tuple(float(t) for t in timesteps)
    if not all(math.isfinite(t) for t in values):
        raise HSpaceError(f"{what}: finite timesteps expected, got {list(values)}")
    if len(set(values)) != len(values):
        duplicated = sorted({t for t in values if values.count(t) > 1})
        raise HSpaceError(f"{what}: distinct timesteps expected, got {duplicated} more than once")
    return values


def check_edit_samples(samples: Any) -> torch.Tensor | None:
    """The sample indices an edit names: non-negative integers (a negative index would edit from the end)."""
    if samples is None:
        return None
    rows = torch.as_tensor(samples)
    if rows.is_floating_point() or rows.is_complex() or rows.dtype == torch.bool or rows.ndim > 1:
        raise HSpaceError(f"an edit's samples: a list of sample indices (integers) expected, got {samples!r}")
    rows = rows.long().flatten()
    if len(rows) and int(rows.min()) < 0:
        raise HSpaceError(f"an edit's samples: sample indices >= 0 expected, got {int(rows.min())}")
    return rows


# -- model folders -----------------------------------------------------------------------------------------------

def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from a file, or a clear error naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise HSpaceError(f"{what} {path} cannot be read: {err}") from None
    except json.JSONDecodeError as err:
        raise HSpaceError(f"{what} {path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise HSpaceError(f"{what} {path}: a JSON object expected, got a JSON {type(value).__name__}")
    return value


def check_pixel_unet_config(config: Any, where: str = "this model") -> None:
    """An unconditional pixel DDPM: a diffusers ``UNet2DModel`` config without text or class conditioning."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    kind = get("_class_name")
    if get("cross_attention_dim") or kind == "UNet2DConditionModel":
        raise HSpaceError(f"{where} is a text-conditional UNet (UNet2DConditionModel, Stable Diffusion style): a pixel "
                          "DDPM (UNet2DModel) expected; load Stable Diffusion with a ComfyUI checkpoint loader")
    if kind not in (None, "UNet2DModel") or get("down_block_types") is None:
        raise HSpaceError(f"{where} is a {kind or 'model without UNet blocks'}: a pixel DDPM (diffusers UNet2DModel) "
                          "expected (transformer / DiT models have no middle block to edit)")
    if get("num_class_embeds") or get("class_embed_type"):
        raise HSpaceError(f"{where} is a class-conditional UNet2DModel: an unconditional pixel DDPM expected")


def _check_safetensors_size(path: Path) -> None:
    """A safetensors file holds all the bytes its header claims (a cut-off download does not)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = f.read(length) if 0 < length <= size - 8 else b""
    try:
        entries = json.loads(header)
        end = max((int(v["data_offsets"][1]) for k, v in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise HSpaceError(f"the weights {path} are not a readable safetensors file (truncated or corrupt)") from None
    if 8 + length + end > size:
        raise HSpaceError(f"the weights {path} are truncated: the header claims {8 + length + end} bytes, the file "
                          f"has {size} (download or copy it again)")


def check_unet_folder(unet_dir: str | Path) -> dict[str, Any]:
    """A pixel-DDPM UNet folder: a JSON ``config.json`` of a UNet2DModel and complete weights. Returns the config."""
    unet_dir = Path(unet_dir)
    config = read_json(unet_dir / "config.json", "the UNet config")
    check_pixel_unet_config(config, f"the model in {unet_dir}")
    weights = [unet_dir / name for name in UNET_WEIGHTS if (unet_dir / name).is_file()]
    if not weights:
        raise HSpaceError(f"{unet_dir} has a config.json but no weights: {UNET_WEIGHTS[0]} expected next to it")
    if weights[0].suffix == ".safetensors":
        _check_safetensors_size(weights[0])
    return config


def check_loading_info(info: dict[str, Any], unet_dir: str | Path) -> None:
    """diffusers' loading report: weights that are missing or of another shape would stay randomly initialised."""
    missing = list(info.get("missing_keys") or []) + [k[0] if isinstance(k, tuple) else k
                                                      for k in info.get("mismatched_keys") or []]
    if missing:
        raise HSpaceError(f"the weights in {unet_dir} do not fit its config.json: {len(missing)} tensors missing or "
                          f"of another shape (e.g. {missing[0]!r})")


def check_scheduler_config(config: dict[str, Any], where: str = "the scheduler config") -> dict[str, Any]:
    """The schedule fields hspace reads: numbers where numbers belong."""
    for key in ("beta_start", "beta_end"):
        if key in config:
            check_number(config[key], f"{where}: {key}", 0.0, 1.0)
    if "num_train_timesteps" in config:
        check_number(config["num_train_timesteps"], f"{where}: num_train_timesteps", 2, integer=True)
    for key in ("beta_schedule", "prediction_type"):
        if key in config and not isinstance(config[key], str):
            raise HSpaceError(f"{where}: {key} must be a string, got {config[key]!r}")
    return config
