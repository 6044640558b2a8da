"""Direction nodes: load and save in models/hspace_directions, arithmetic, picking from a set, info."""
from __future__ import annotations

from typing import Any

from ..hspace_core import arithmetic
from ..hspace_core.checks import check_number
from ..hspace_core.direction import Direction
from ..hspace_core.errors import HSpaceError
from ..hspace_core.fileio import load_directions, save_directions

from . import _folders, _v3
from ._types import DIRECTION, DirectionSet, as_set, single

CATEGORY = "hspace/directions"
JOIN_MIN, JOIN_MAX = 2, 16
INFO_KEYS = ("method", "component", "units", "per_timestep", "num_samples", "default_strength", "strength_range",
             "edit_window", "hook_site",
             "version")


def _direction_input(tooltip: str) -> tuple[str, dict[str, str]]:
    return (DIRECTION, {"tooltip": tooltip})


def summary(direction: Direction) -> dict[str, Any]:
    """What a person wants to know about a direction, JSON-ready (also sent to the frontend)."""
    meta = direction.meta
    fingerprint = meta.get("fingerprint") or {}
    info = {"h_shape": list(direction.h_shape), "norm": round(arithmetic.norm(direction), 6),
            "per_timestep_keys": len(direction.timesteps) if direction.per_timestep else 0,
            "model": fingerprint.get("arch", "unknown"), "weights": fingerprint.get("weights", "unknown")}
    info.update({key: meta[key] for key in INFO_KEYS if key in meta})
    if direction.per_timestep:
        info["timesteps"] = [round(direction.timesteps[0], 2), round(direction.timesteps[-1], 2)]
    spectrum = meta.get("explained_variance_ratio")
    if spectrum:
        info["explained_variance_ratio_mean"] = round(sum(spectrum) / len(spectrum), 6)
    return info


def describe(directions: DirectionSet) -> str:
    """Plain-text info of a set, one block per direction."""
    blocks = []
    for i, direction in enumerate(as_set(directions)):
        lines = [f"[{i}]"] + [f"  {key}: {value}" for key, value in summary(direction).items()]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


class HSpaceLoadDirection:
    """Load a direction, or the set a file holds, (.safetensors with hspace metadata) from models/hspace_directions."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION, "STRING")
    RETURN_NAMES = ("direction", "info")
    OUTPUT_TOOLTIPS = ("the loaded direction (or set of directions)", "what the file holds: method, model, shape",)
    FUNCTION = "load"
    HAS_INTERMEDIATE_OUTPUT = True  # ComfyUI re-sends its cached ui (drawn by web/js/hspace.js) on a re-run

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"direction_name": (_folders.list_names(), {
            "tooltip": "a direction file in models/hspace_directions (saved by Save Direction)"})}}

    @classmethod
    def IS_CHANGED(cls, direction_name: str) -> str:
        stat = _folders.resolve(direction_name).stat()
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    def load(self, direction_name: str) -> dict[str, Any]:
        directions = load_directions(_folders.resolve(direction_name))
        return {"ui": {"hspace_info": [summary(d) for d in directions]}, "result": (directions, describe(directions))}


class HSpaceSaveDirection:
    """Save a direction, or a set as one file (whole or not at all), to models/hspace_directions as .safetensors."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "direction": _direction_input("the direction or set to save; a set is one file, loaded "
                                            "back as the set (Pick Direction takes one out)"),
            "filename": ("STRING", {"default": "hspace/direction",
                                    "tooltip": "file name inside models/hspace_directions, without extension"}),
            "overwrite": ("BOOLEAN", {"default": False,
                                      "tooltip": "replace an existing file; off: add a counter to the name"}),
        }}

    def save(self, direction: DirectionSet, filename: str, overwrite: bool) -> dict[str, Any]:
        path = save_directions(as_set(direction), _folders.save_path(filename, overwrite))
        return {"ui": {"text": [str(path)]}}


class HSpaceDirectionInfo:
    """Show a direction's metadata (method, model, norm, timesteps, spectrum) as text on the node."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("info",)
    OUTPUT_TOOLTIPS = ("the direction's method, model, shape, norm and edit window",)
    FUNCTION = "info"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"direction": _direction_input("the direction or set to describe")}}

    def info(self, direction: DirectionSet) -> dict[str, Any]:
        items = as_set(direction)
        text = describe(items)
        return {"ui": {"text": [text], "hspace_info": [summary(d) for d in items]}, "result": (text,)}


class HSpaceCompareDirections:
    """Cosine similarity and norms of two directions (per-timestep keys matched), e.g. to check that a disentangled
    direction is orthogonal to its conditions, or how much two discovered directions overlap."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("cosine", "report")
    OUTPUT_TOOLTIPS = (
        "cosine similarity of the two directions (1 = same way, 0 = unrelated)",
        "the cosine and the norms as text",
    )
    SEARCH_ALIASES = ["cosine similarity"]
    FUNCTION = "compare"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": _direction_input("first direction"), "b": _direction_input("second direction")}}

    def compare(self, a: DirectionSet, b: DirectionSet) -> dict[str, Any]:
        first, second = single(a), single(b)
        cosine = arithmetic.cosine(first, second)
        text = (f"cosine: {cosine:.6f}\nnorm a: {arithmetic.norm(first):.6g}\nnorm b: {arithmetic.norm(second):.6g}\n"
                f"a: {first.meta.get('method')}\nb: {second.meta.get('method')}")
        return {"ui": {"text": [text]}, "result": (cosine, text)}


class HSpacePickDirection:
    """Take the k-th direction out of a set (PCA components, Jacobian vectors, ...)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("the chosen direction of the set",)
    FUNCTION = "pick"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "directions": _direction_input("a set of directions"),
            "index": ("INT", {"default": 0, "min": 0, "max": 4096,
                              "tooltip": "which one, counting from 0 (PCA: 0 is the largest component)"}),
        }}

    def pick(self, directions: DirectionSet, index: int) -> tuple[DirectionSet]:
        check_number(index, "index", 0, integer=True)
        items = as_set(directions)
        if index >= len(items):
            raise HSpaceError(f"index {index} is out of range: this set holds {len(items)} directions "
                              f"(0..{len(items) - 1})")
        return ([items[index]],)


class HSpaceJoinDirections(_v3.ComfyNode):
    """Join directions or sets into one set, in socket order (e.g. the conditions for Project Out); a new socket
    appears as each one is connected."""

    @classmethod
    def define_schema(cls) -> Any:
        return _v3.schema(
            cls, DISPLAY_NAMES[cls.__name__], CATEGORY, ["combine directions", "merge"],
            inputs=[_v3.growing("directions", _direction_input("a direction or set, appended after the ones above"),
                                "direction", JOIN_MIN, JOIN_MAX, "the directions or sets to join, in order")],
            outputs=_v3.as_outputs((DIRECTION,), ("directions",), ("one set holding all connected directions, in "
                                                                   "order",)))

    @classmethod
    def execute(cls, directions: dict[str, DirectionSet]) -> tuple[DirectionSet]:
        connected = sorted((int(name.removeprefix("direction")), value) for name, value in directions.items()
                           if value is not None)
        if len(connected) < JOIN_MIN:
            raise HSpaceError(f"Join Directions needs at least {JOIN_MIN} directions connected, got {len(connected)}")
        return ([item for _, value in connected for item in as_set(value)],)


class HSpaceAddDirections:
    """a + b (per-timestep keys are matched; a global direction is used at every key)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("a + b",)
    SEARCH_ALIASES = ["sum directions"]
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": _direction_input("first direction"), "b": _direction_input("second direction")}}

    def add(self, a: DirectionSet, b: DirectionSet) -> tuple[DirectionSet]:
        return ([arithmetic.add(single(a), single(b))],)


class HSpaceSubtractDirections:
    """a - b (per-timestep keys are matched; a global direction is used at every key)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("a - b",)
    SEARCH_ALIASES = ["difference of directions"]
    FUNCTION = "subtract"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": _direction_input("the direction to subtract from"),
                             "b": _direction_input("the direction subtracted")}}

    def subtract(self, a: DirectionSet, b: DirectionSet) -> tuple[DirectionSet]:
        return ([arithmetic.subtract(single(a), single(b))],)


class HSpaceScaleDirection:
    """factor * direction (a negative factor reverses it)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("the direction times the factor",)
    SEARCH_ALIASES = ["multiply direction"]
    FUNCTION = "scale"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "direction": _direction_input("the direction to scale"),
            "factor": ("FLOAT", {"default": 1.0, "min": -1000.0, "max": 1000.0, "step": 0.01,
                                 "tooltip": "multiplier; negative reverses the direction"}),
        }}

    def scale(self, direction: DirectionSet, factor: float) -> tuple[DirectionSet]:
        return ([arithmetic.scale(single(direction), factor)],)


class HSpaceNormalizeDirection:
    """Scale a direction to unit norm (over the whole tensor, or each timestep's slice)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("the direction scaled to unit norm",)
    SEARCH_ALIASES = ["unit direction"]
    FUNCTION = "normalize"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "direction": _direction_input("the direction to normalize"),
            "per_timestep": ("BOOLEAN", {
                "default": False, "tooltip": "unit norm for every timestep's slice instead of the whole tensor"}),
        }}

    def normalize(self, direction: DirectionSet, per_timestep: bool) -> tuple[DirectionSet]:
        return ([arithmetic.normalize(single(direction), per_timestep)],)


class HSpaceOrthogonalizeDirections:
    """Gram-Schmidt on a set: each direction minus its projection on the ones before it (norms kept)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("directions",)
    OUTPUT_TOOLTIPS = ("the set made mutually orthogonal, in order (Gram-Schmidt)",)
    SEARCH_ALIASES = ["gram-schmidt"]
    FUNCTION = "orthogonalize"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"directions": _direction_input("the set to orthogonalize, in order")}}

    def orthogonalize(self, directions: DirectionSet) -> tuple[DirectionSet]:
        return (arithmetic.orthogonalize(as_set(directions)),)


class HSpaceProjectOutDirections:
    """Remove from a direction the span of all condition directions at once (Haas et al.'s disentangling)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("the direction without its components along the others (disentangled)",)
    SEARCH_ALIASES = ["disentangle", "remove attribute"]
    FUNCTION = "project_out"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "direction": _direction_input("the direction to disentangle"),
            "conditions": _direction_input("the directions (a set) to become orthogonal to, projected jointly"),
        }}

    def project_out(self, direction: DirectionSet, conditions: DirectionSet) -> tuple[DirectionSet]:
        return ([arithmetic.project_out(single(direction), as_set(conditions))],)


class HSpaceSlerpDirections:
    """Spherical interpolation between two directions (norm interpolated linearly)."""

    DESCRIPTION = __doc__
    CATEGORY = CATEGORY
    RETURN_TYPES = (DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("the spherical interpolation between a and b at t",)
    SEARCH_ALIASES = ["interpolate directions"]
    FUNCTION = "slerp"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "a": _direction_input("the direction at t = 0"),
            "b": _direction_input("the direction at t = 1"),
            "t": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                            "tooltip": "interpolation position between a (0) and b (1)"}),
        }}

    def slerp(self, a: DirectionSet, b: DirectionSet, t: float) -> tuple[DirectionSet]:
        return ([arithmetic.slerp(single(a), single(b), t)],)


NODE_CLASSES = (HSpaceLoadDirection, HSpaceSaveDirection, HSpaceDirectionInfo, HSpaceCompareDirections,
                HSpacePickDirection,
                HSpaceJoinDirections, HSpaceAddDirections, HSpaceSubtractDirections, HSpaceScaleDirection,
                HSpaceNormalizeDirection, HSpaceOrthogonalizeDirections, HSpaceProjectOutDirections,
                HSpaceSlerpDirections)
DISPLAY_NAMES = {
    "HSpaceLoadDirection": "Load Direction (hspace)",
    "HSpaceSaveDirection": "Save Direction (hspace)",
    "HSpaceDirectionInfo": "Direction Info (hspace)",
    "HSpaceCompareDirections": "Compare Directions (hspace)",
    "HSpacePickDirection": "Pick Direction (hspace)",
    "HSpaceJoinDirections": "Join Directions (hspace)",
    "HSpaceAddDirections": "Add Directions (hspace)",
    "HSpaceSubtractDirections": "Subtract Directions (hspace)",
    "HSpaceScaleDirection": "Scale Direction (hspace)",
    "HSpaceNormalizeDirection": "Normalize Direction (hspace)",
    "HSpaceOrthogonalizeDirections": "Orthogonalize Directions (hspace)",
    "HSpaceProjectOutDirections": "Project Out Directions (hspace)",
    "HSpaceSlerpDirections": "Slerp Directions (hspace)",
}
