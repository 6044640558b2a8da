"""The one place in ``nodes/`` that knows whether ComfyUI is importable.

Everything else in ``nodes/`` imports ComfyUI through :func:`require` (inside functions), so the node
modules import in plain pytest, where ComfyUI is absent. The sampling glue every sampling node shares lives
here too: latent previews on the progress bar and the core samplers' seeded noise.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from types import ModuleType
from typing import Any, Callable

from ..hspace_core.errors import HSpaceError


def available() -> bool:
    """True when ComfyUI's backend (``comfy.model_patcher``) can be imported."""
    if "comfy.model_patcher" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("comfy.model_patcher") is not None
    except (ImportError, ValueError):
        return False


def require(name: str = "comfy") -> ModuleType:
    """Import a ComfyUI module (``"comfy.samplers"``, ``"comfy.utils"``, ...) or explain that ComfyUI is needed."""
    if not available():
        raise HSpaceError(f"this needs ComfyUI (module {name!r}), which is not importable here: "
                          "run it inside ComfyUI, or use hspace_core's diffusers path")
    return importlib.import_module(name)


def optional(name: str) -> ModuleType | None:
    """The ComfyUI module, or None when ComfyUI (or that module) is absent."""
    if not available():
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


SamplingCallback = Callable[[int, Any, Any, int], None]


def preview_callback(model: Any, steps: int) -> SamplingCallback | None:
    """SamplerCustom's per-step callback ``(step, x0, x, total_steps)``: the node's progress bar with a latent
    preview of x0 (``latent_preview.prepare_callback``; the bar also honours Cancel). None outside ComfyUI."""
    latent_preview = optional("latent_preview")
    return None if latent_preview is None else latent_preview.prepare_callback(model, steps)


def offset_callback(callback: SamplingCallback | None, done: int, total: int) -> SamplingCallback | None:
    """One run's callback inside a node that samples several runs on one bar of ``total`` steps, ``done`` before it."""
    if callback is None:
        return None
    return lambda step, x0, x, _steps: callback(done + step, x0, x, total)


def seeded_noise(samples: Any, seed: int, latent: dict[str, Any]) -> Any:
    """The noise KSampler and SamplerCustom's RandomNoise draw for a latent and seed (``batch_index`` honoured)."""
    return require("comfy.sample").prepare_noise(samples, seed, latent.get("batch_index"))


def solver_report(what: str, result: Any, max_iter: int) -> str | None:
    """A warning line when an iterative solver stopped at its iteration limit without converging (also logged);
    None when it converged. Reads the result's ``converged``, ``iterations`` and ``tolerance`` (the tolerance
    reached) where it has them."""
    if getattr(result, "converged", True):
        return None
    iterations = getattr(result, "iterations", None)
    reached = getattr(result, "tolerance", None)
    ran = f"after {iterations} iterations" if iterations is not None else f"at max_iter {max_iter}"
    tolerance = f" (tolerance reached {float(reached):.3g})" if reached is not None else ""
    message = (f"warning: {what} did not converge {ran}{tolerance}; the directions are approximate: raise max_iter "
               f"(now {max_iter})")
    logging.getLogger("hspace").warning("hspace: %s", message)
    return message


def preview_images(images: Any) -> list[dict[str, Any]]:
    """IMAGEs saved as ComfyUI previews (temp folder), for a node's ``ui["images"]``; empty outside ComfyUI."""
    comfy_nodes = optional("nodes")
    if comfy_nodes is None or not hasattr(comfy_nodes, "PreviewImage"):
        return []
    return comfy_nodes.PreviewImage().save_images(images)["ui"]["images"]
