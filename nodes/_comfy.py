"""The one place in ``nodes/`` that knows whether ComfyUI is importable.

Everything else in ``nodes/`` imports ComfyUI through :func:`require` (inside functions), so the node
modules import in plain pytest, where ComfyUI is absent.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from hspace_core.errors import HSpaceError


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
