"""The example workflows (UI format) refer to existing nodes, type-check, and match the widget declarations."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modules import load_module
from nodes.registry import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}

# ComfyUI core nodes the examples use: (socket inputs, widget inputs, outputs), from ComfyUI 0.33's declarations.
# Widgets named seed / noise_seed carry the frontend's control_after_generate value after them.
CORE = {
    "CheckpointLoaderSimple": ({}, ["ckpt_name"], ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": ({"clip": "CLIP"}, ["text"], ["CONDITIONING"]),
    "EmptyLatentImage": ({}, ["width", "height", "batch_size"], ["LATENT"]),
    "BasicScheduler": ({"model": "MODEL"}, ["scheduler", "steps", "denoise"], ["SIGMAS"]),
    "KSampler": ({"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
                 ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"], ["LATENT"]),
    "SamplerCustom": ({"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING",
                       "sampler": "SAMPLER", "sigmas": "SIGMAS", "latent_image": "LATENT"},
                      ["add_noise", "noise_seed", "cfg"], ["LATENT", "LATENT"]),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, [], ["IMAGE"]),
    "UNETLoader": ({}, ["unet_name", "weight_dtype"], ["MODEL"]),
    "DualCLIPLoader": ({}, ["clip_name1", "clip_name2", "type", "device"], ["CLIP"]),
    "VAELoader": ({}, ["vae_name"], ["VAE"]),
    "FluxGuidance": ({"conditioning": "CONDITIONING"}, ["guidance"], ["CONDITIONING"]),
    "ConditioningZeroOut": ({"conditioning": "CONDITIONING"}, [], ["CONDITIONING"]),
    "EmptySD3LatentImage": ({}, ["width", "height", "batch_size"], ["LATENT"]),
    "SaveImage": ({"images": "IMAGE"}, ["filename_prefix"], []),
    "Note": ({}, ["text"], []),
}
SEEDS = {"seed", "noise_seed"}


GENERATOR = load_module("make_workflows", ROOT / "scripts" / "make_workflows.py")


@dataclass
class Decoded:
    """A UI node read against its declaration: sockets (name -> (type, required)), widgets (name -> (value,
    declaration)), output types, and the widget values left over."""
    sockets: dict[str, tuple[str, bool]] = field(default_factory=dict)
    widgets: dict[str, tuple[object, tuple]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    left: list = field(default_factory=list)


def _walk(spec: dict, node: dict, values: list, prefix: str, out: Decoded) -> None:
    """The frontend's order: a widget takes the next value (a seed also its control value); a DynamicCombo's value
    picks the option whose inputs follow it (named <combo>.<input>); an Autogrow holds the node's sockets named
    <name>.<prefix><i>."""
    for section in ("required", "optional"):
        for name, declaration in spec.get(section, {}).items():
            kind, options = declaration[0], (declaration[1] if len(declaration) > 1 else {})
            full = prefix + name
            if kind == GENERATOR.AUTOGROW:
                template = options["template"]
                (slot_kind, *_), = [d for part in template["input"].values() for d in part.values()]
                grown = [i["name"] for i in node["inputs"] if i["name"].startswith(f"{full}.")]
                assert grown == [f"{full}.{template['prefix']}{i}" for i in range(len(grown))], grown
                assert template["min"] <= len(grown) <= template["max"], grown
                out.sockets.update({n: (slot_kind, i < template["min"]) for i, n in enumerate(grown)})
            elif isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES or kind in ("COMBO", GENERATOR.DYNAMIC_COMBO):
                assert values, f"node {node['id']} ({node['type']}): no value left for {full}"
                out.widgets[full] = (values.pop(0), declaration)
                if options.get("control_after_generate") or name in SEEDS:
                    assert values.pop(0) in ("fixed", "increment", "decrement", "randomize"), full
                if kind == GENERATOR.DYNAMIC_COMBO:
                    chosen = [o for o in options["options"] if o["key"] == out.widgets[full][0]]
                    assert chosen, f"{node['type']}.{full}: {out.widgets[full][0]!r} is no option"
                    _walk(chosen[0]["inputs"], node, values, f"{full}.", out)
            else:
                out.sockets[full] = (kind, section == "required")


def decode(node: dict) -> Decoded:
    if node["type"] in CORE:
        sockets, widgets, outputs = CORE[node["type"]]
        values = list(node["widgets_values"])
        decoded = Decoded({n: (k, True) for n, k in sockets.items()}, {}, list(outputs))
        for name in widgets:
            decoded.widgets[name] = (values.pop(0) if values else None, ("CORE", {}))
            if name in SEEDS and values:
                values.pop(0)
        decoded.left = values
        return decoded
    info = GENERATOR.node_info(node["type"])
    decoded = Decoded(outputs=list(info["output"]))
    values = list(node["widgets_values"])
    _walk(info["input"], node, values, "", decoded)
    decoded.left = values
    return decoded


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_the_promised_examples():
    ids = {load(p)["extra"]["hspace_id"] for p in WORKFLOWS}
    assert {"pca_edit_embedded", "real_image_inversion_edit", "supervised_disentangle", "jacobian_edit",
            "pullback_edit", "asyrp_sd15", "direction_arithmetic_save_load", "asyrp_train_embedded",
            "dit_pca_asyrp_embedded", "evaluate_direction_embedded", "asyrp_flux", "asyrp_sd35"} <= ids


def test_file_names_are_readable_titles():
    # the Templates browser shows a pack template's file stem as its title
    for path in WORKFLOWS:
        assert path.stem == load(path)["extra"]["hspace_title"]
        assert path.stem[0].isupper() and "_" not in path.stem and " " in path.stem


def note_texts(graph: dict) -> list[str]:
    notes = sorted((n for n in graph["nodes"] if n["type"] == "Note"), key=lambda n: n["id"])
    return [n["widgets_values"][0] for n in notes]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_the_first_note_says_what_the_example_needs(path):
    first = note_texts(load(path))[0]
    assert first.startswith("Needs "), first


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_notes_fit_their_boxes(path):
    for node in load(path)["nodes"]:
        if node["type"] == "Note":
            width, height = node["size"]
            chars_per_line = width / 9  # a generous glyph width for the frontend's note font
            lines = sum(-(-max(len(line), 1) // int(chars_per_line)) for line in node["widgets_values"][0].split("\n"))
            assert height >= 30 + GENERATOR.NOTE_LINE_HEIGHT * lines, (node["id"], node["size"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_example_names_a_file_it_does_not_make_itself(path):
    # on a fresh install nothing is in models/hspace_directions: a Load Direction would show a missing model
    assert all(node["type"] != "HSpaceLoadDirection" for node in load(path)["nodes"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_ui_format_with_a_thumbnail(path):
    graph = load(path)
    assert graph["version"] == 0.4
    assert path.with_suffix(".jpg").is_file()  # what the Templates browser requests
    ids = [n["id"] for n in graph["nodes"]]
    assert len(set(ids)) == len(ids) and graph["last_node_id"] >= max(ids)
    assert graph["last_link_id"] >= max((link[0] for link in graph["links"]), default=0)
    for node in graph["nodes"]:
        assert {"id", "type", "pos", "size", "inputs", "outputs", "widgets_values"} <= set(node)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_exist_and_widgets_match(path):
    for node in load(path)["nodes"]:
        assert node["type"] in CORE or node["type"] in NODE_CLASS_MAPPINGS, f"unknown node type {node['type']}"
        decoded = decode(node)
        assert not decoded.left, f"node {node['id']} ({node['type']}): widget values {decoded.left} left over"
        assert None not in [v for v, _ in decoded.widgets.values()] or node["type"] == "Note"
        assert [(i["name"], i["type"]) for i in node["inputs"]] == [(n, k) for n, (k, _) in decoded.sockets.items()]
        assert [o["type"] for o in node["outputs"]] == decoded.outputs


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_type_check(path):
    graph = load(path)
    nodes = {n["id"]: n for n in graph["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in graph["links"]:
        assert decode(nodes[src]).outputs[src_slot] == kind, f"link {link_id}: {nodes[src]['type']} output {src_slot}"
        target = nodes[dst]["inputs"][dst_slot]
        assert decode(nodes[dst]).sockets[target["name"]][0] == kind and target["link"] == link_id, \
            f"link {link_id} into {target}"
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
    for node in nodes.values():
        sockets = decode(node).sockets
        for socket in node["inputs"]:
            assert socket["link"] is not None or not sockets[socket["name"]][1], \
                f"node {node['id']}: {socket['name']} is unconnected"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_combo_values_are_allowed(path):
    for node in load(path)["nodes"]:
        if node["type"] not in NODE_CLASS_MAPPINGS or node["type"] == "HSpaceLoadDirection":
            continue  # LoadDirection lists the files present; the real-ComfyUI test covers it
        for name, (value, (kind, *rest)) in decode(node).widgets.items():
            options = rest[0] if rest else {}
            if isinstance(kind, (list, tuple)) or kind == "COMBO":
                assert value in (kind if isinstance(kind, (list, tuple)) else options["options"]), f"{node['type']}.{name}"
            elif kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), f"{node['type']}.{name}"


def test_the_generator_reproduces_the_files():
    for workflow in GENERATOR.WORKFLOWS:
        assert load(ROOT / "example_workflows" / f"{workflow.file_stem}.json") == GENERATOR.build(workflow)
    assert (ROOT / "example_workflows" / "README.md").read_text() == GENERATOR.readme()
