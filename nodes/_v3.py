"""ComfyUI's V3 node schema (``comfy_api.latest``), used by the nodes whose inputs depend on a mode (DynamicCombo)
or grow as they are connected (Autogrow).

Inside ComfyUI a V3 node subclasses ``io.ComfyNode``. Without ComfyUI (plain pytest, the library's users) it is a
plain class: importable, its ``execute`` callable with the nested values ComfyUI would pass (a DynamicCombo's
value is a dict ``{<combo name>: <key>, <option input>: value, ...}``, an Autogrow's a dict of the connected
inputs), only its schema cannot be built. The inputs are declared once, as the V1 specs of ``_inputs``, and
turned into V3 inputs here, so both kinds of node share each input's tooltip, range and default.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..hspace_core.errors import HSpaceError

try:
    from comfy_api.latest import io
except ImportError:  # not inside ComfyUI
    io = None

WIDGETS = {"INT": "Int", "FLOAT": "Float", "STRING": "String", "BOOLEAN": "Boolean"}
Spec = tuple[Any, ...]


class PlainNode:
    """The base of a V3 node outside ComfyUI: ``execute`` works, the schema needs ComfyUI."""

    hidden = None


ComfyNode: type = PlainNode if io is None else io.ComfyNode


def is_v3(node: type) -> bool:
    return isinstance(node, type) and issubclass(node, ComfyNode) and node is not ComfyNode


def unique_id(node: type) -> str | None:
    """The running node's id (for its progress bar), None outside ComfyUI."""
    return getattr(getattr(node, "hidden", None), "unique_id", None)


def as_input(name: str, spec: Spec, optional: bool = False) -> Any:
    """The V3 input of a V1 declaration ``(TYPE or [choices], {options})``."""
    kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(kind, (list, tuple)):
        return io.Combo.Input(name, options=list(kind), optional=optional, **options)
    comfy_type = getattr(io, WIDGETS[kind]) if kind in WIDGETS else io.Custom(kind)
    return comfy_type.Input(name, optional=optional, **options)


def as_inputs(required: dict[str, Spec], optional: dict[str, Spec] | None = None) -> list[Any]:
    """V3 inputs of V1 ``required`` and ``optional`` sections, in order."""
    return ([as_input(name, spec) for name, spec in required.items()]
            + [as_input(name, spec, optional=True) for name, spec in (optional or {}).items()])


def as_outputs(types: Sequence[str], names: Sequence[str], tooltips: Sequence[str]) -> list[Any]:
    return [io.Custom(kind).Output(name, display_name=name, tooltip=tooltip)
            for kind, name, tooltip in zip(types, names, tooltips)]


def mode_combo(name: str, options: dict[str, dict[str, Spec]], tooltip: str) -> Any:
    """A DynamicCombo: each choice with the inputs only it takes (V1 specs, in order)."""
    return io.DynamicCombo.Input(name, tooltip=tooltip, options=[
        io.DynamicCombo.Option(key, [as_input(n, spec) for n, spec in specs.items()]) for key, specs in options.items()])


def growing(name: str, spec: Spec, prefix: str, min: int, max: int, tooltip: str) -> Any:
    """An Autogrow of sockets ``<prefix>0, <prefix>1, ...``: one more appears as each is connected."""
    template = io.Autogrow.TemplatePrefix(as_input(prefix, spec), prefix=prefix, min=min, max=max)
    return io.Autogrow.Input(name, template=template, tooltip=tooltip)


def schema(node: type, display_name: str, category: str, search_aliases: list[str], inputs: list[Any],
           outputs: list[Any]) -> Any:
    """``io.Schema`` of a pack node: its id the class name, its description the class docstring."""
    return io.Schema(node_id=node.__name__, display_name=display_name, category=category, description=node.__doc__,
                     search_aliases=search_aliases, inputs=inputs, outputs=outputs, hidden=[io.Hidden.unique_id])


def chosen(value: dict[str, Any] | str, name: str, options: dict[str, dict[str, Spec]]) -> tuple[str, dict[str, Any]]:
    """A DynamicCombo's value as (choice, the choice's inputs), an input not given taking its declared default; a
    bare string is a choice with all its inputs at their defaults."""
    if isinstance(value, str):
        value = {name: value}
    choice = value.get(name) if isinstance(value, dict) else value
    if choice not in options:
        raise HSpaceError(f"{name} must be one of {', '.join(map(repr, options))}, got {choice!r}")
    given = {k: v for k, v in value.items() if k != name}
    return choice, {n: given.get(n, spec[1].get("default")) for n, spec in options[choice].items()}
