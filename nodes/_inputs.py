"""Input declarations shared by several node families, so their tooltips stay the same everywhere."""
from __future__ import annotations

from typing import Any

from ._types import DIRECTION, NOISE, TRAJECTORY

Spec = tuple[str, dict[str, Any]]


def model(tooltip: str = "a UNet MODEL (SD1.x/2.x/XL checkpoint, or a pixel DDPM from the hspace loader), or a "
                         "Flux or SD3 transformer") -> Spec:
    return ("MODEL", {"tooltip": tooltip})


def hook_site() -> Spec:
    return ("STRING", {"default": "auto", "tooltip": "where h is read: auto = a UNet's middle block, or the middle "
                                                     "block of a transformer's first block list (Flux: "
                                                     "double_blocks.<n/2>.output, SD3: joint_blocks.<n/2>.output); "
                                                     "or a block output such as double_blocks.3.output, "
                                                     "single_blocks.10.output (image tokens only), or a block's "
                                                     "attention output such as double_blocks.3.attn.output "
                                                     "(FluxSpace's space: the joint attention's image tokens before "
                                                     "the output projection). Directions "
                                                     "remember it and Apply Direction hooks the same site"})


def sigmas(tooltip: str = "the sampling schedule, e.g. BasicScheduler with ddim_uniform") -> Spec:
    return ("SIGMAS", {"tooltip": tooltip})


def latent(tooltip: str) -> Spec:
    return ("LATENT", {"tooltip": tooltip})


def cfg(default: float = 1.0) -> Spec:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                      "tooltip": "classifier-free guidance scale (1 = no guidance, one model call per step)"})


def seed(tooltip: str = "random seed of the start noise") -> Spec:
    return ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                    "tooltip": tooltip})


def eta(default: float = 0.0, tooltip: str = "DDIM eta: 0 = deterministic, 1 = DDPM (stochastic)") -> Spec:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": tooltip})


def conditioning(which: str) -> Spec:
    return ("CONDITIONING", {"tooltip": f"{which} prompt; leave unconnected for unconditional (pixel) models"})


def direction(tooltip: str = "a direction (a set of one), e.g. from Pick Direction or Load Direction") -> Spec:
    return (DIRECTION, {"tooltip": tooltip})


def trajectory(tooltip: str = "captured h (from Capture h or Invert Image)") -> Spec:
    return (TRAJECTORY, {"tooltip": tooltip})


def noise_record(tooltip: str = "the noise record of Invert Image") -> Spec:
    return (NOISE, {"tooltip": tooltip})


def timestep(default: int, tooltip: str) -> Spec:
    return ("INT", {"default": default, "min": 0, "max": 999, "tooltip": f"{tooltip} (model timestep 0..999)"})


def percent(default: float, tooltip: str) -> Spec:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tooltip})


def optional_conditioning() -> dict[str, Spec]:
    return {"positive": conditioning("positive"), "negative": conditioning("negative")}


HIDDEN = {"unique_id": "UNIQUE_ID"}


# -- VALIDATE_INPUTS checks: errors knowable from widget values before anything upstream runs (a linked
# value is not known then and is left to the node) -----------------------------------------------------------
def window_problem(start_percent: Any, end_percent: Any) -> str | bool:
    """VALIDATE_INPUTS' check of an edit window, run before anything upstream (True, or what is wrong)."""
    if isinstance(start_percent, (int, float)) and isinstance(end_percent, (int, float)):
        if not (0.0 <= start_percent <= 1.0 and 0.0 <= end_percent <= 1.0):
            return f"start_percent and end_percent between 0 and 1 expected, got {start_percent} and {end_percent}"
        if start_percent > end_percent:
            return f"start_percent <= end_percent expected, got {start_percent} > {end_percent}: nothing would be edited"
    return True


def timestep_window_problem(t_edit: Any, t_boost: Any) -> str | bool:
    """VALIDATE_INPUTS' check of an Asyrp window [t_edit, T] with boosting below t_boost (True, or what is wrong)."""
    if isinstance(t_edit, (int, float)) and isinstance(t_boost, (int, float)):
        if not (0 <= t_boost <= 999 and 0 <= t_edit <= 999):
            return f"t_edit and t_boost between 0 and 999 expected, got {t_edit} and {t_boost}"
        if t_boost > t_edit:
            return f"t_boost ({t_boost}) must not exceed t_edit ({t_edit}): no step would be edited"
    return True
