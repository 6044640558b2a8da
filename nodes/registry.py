"""Every node class of the pack, gathered family by family.

A family whose module cannot be imported (a missing dependency) is left out with one log line naming what
is missing and which nodes are off; the other families still load.
"""
from __future__ import annotations

import ast
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import _v3

FAMILIES = ("loaders", "capture", "trajectories", "inversion", "discovery", "local_directions", "asyrp_train",
            "directions", "apply", "evaluate")

log = logging.getLogger(__name__)


@dataclass
class Registry:
    classes: dict[str, type] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)
    off: dict[str, list[str]] = field(default_factory=dict)  # family -> its node names, for families not loaded


def declared_nodes(family: str) -> list[str]:
    """The node class names a family module lists in NODE_CLASSES, read from its source without importing it."""
    tree = ast.parse((Path(__file__).parent / f"{family}.py").read_text(encoding="utf-8"))
    for statement in tree.body:
        if (isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == "NODE_CLASSES" for t in statement.targets)
                and isinstance(statement.value, (ast.Tuple, ast.List))):
            return [getattr(item, "attr", getattr(item, "id", "?")) for item in statement.value.elts]
    return []


def load_families(families: tuple[str, ...] = FAMILIES) -> Registry:
    registry = Registry()
    for family in families:
        try:
            module = importlib.import_module(f".{family}", __package__)
        except ImportError as error:
            registry.off[family] = declared_nodes(family)
            if isinstance(error, ModuleNotFoundError):
                log.warning("hspace: nodes %s are off: importing nodes/%s.py needs %r, which is missing (%s); install "
                            "the pack's requirements.txt into ComfyUI's Python", ", ".join(registry.off[family]),
                            family, error.name or str(error), error)
            else:  # a name missing from an installed module: a stale or mixed install, not a missing package
                log.warning("hspace: nodes %s are off: importing nodes/%s.py failed (%s); reinstall the pack so that "
                            "its files and its dependencies' versions match", ", ".join(registry.off[family]), family,
                            error)
            continue
        registry.classes.update({cls.__name__: cls for cls in module.NODE_CLASSES})
        registry.display_names.update(module.DISPLAY_NAMES)
    return registry


def for_comfyui(registry: Registry) -> Registry:
    """What ComfyUI is given: without ComfyUI's V3 API (comfy_api.latest, ComfyUI 0.3.76 and newer) the V3 nodes are
    left out with one log line, the V1 nodes still load."""
    if _v3.io is not None:
        return registry
    v3 = sorted(name for name, cls in registry.classes.items() if _v3.is_v3(cls))
    if v3:
        log.warning("hspace: nodes %s are off: they need ComfyUI's V3 node API (comfy_api.latest), which this ComfyUI "
                    "lacks; update ComfyUI (0.19.3 or newer is supported)", ", ".join(v3))
    return Registry({n: c for n, c in registry.classes.items() if n not in v3},
                    {n: d for n, d in registry.display_names.items() if n not in v3}, {**registry.off, "v3": v3})


LOADED = load_families()
NODE_CLASS_MAPPINGS = LOADED.classes
NODE_DISPLAY_NAME_MAPPINGS = LOADED.display_names
