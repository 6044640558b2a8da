"""Every example workflow runs headlessly in a real ComfyUI through the HTTP API (needs COMFYUI_PATH).

The UI-format files are converted to API prompts here, with the widget order taken from /object_info (the
control_after_generate value after seed widgets skipped), and shrunk for a CPU: 4 steps, few samples, 64 px,
the tiny SD1.5-layout checkpoint of the harness in place of v1-5-pruned-emaonly.safetensors, and a tiny
random CLIP (built here with transformers) in place of CLIP ViT-B/16.

An example whose weight files have no stand-in here (Flux's and SD3.5's: their text encoders and VAE cannot be
shrunk for ComfyUI's loaders) is not run: the server validates its prompt, unshrunk, and must refuse it only for
the absent weight files its first Note names. test_transformer_http_comfyui.py runs the same node chain on tiny
Flux and SD3 models.
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from hspace_core.direction import Direction
from hspace_core.fileio import save_direction

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
STAND_INS = {"v1-5-pruned-emaonly.safetensors"}  # weight files the harness replaces with a tiny model of its layout
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEEDS = {"seed", "noise_seed"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
EMBEDDED_H_SHAPE = (64, 4, 4)
# widget -> value (or a function of the value) that keeps each run to seconds on a CPU
SHRINK = {
    "steps": lambda v: min(v, 4),
    "num_samples": lambda v: min(v, 8),
    "k": lambda v: min(v, 2),
    "count": lambda v: min(v, 3),
    "max_iter": lambda v: min(v, 3),
    "guidance_steps": lambda v: min(v, 2),
    "width": lambda v: min(v, 64),
    "height": lambda v: min(v, 64),
    "batch_size": lambda v: min(v, 2),
}


def is_widget(spec: list) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_values(spec: dict[str, Any], order: dict[str, list[str]] | None, values: Iterator[Any],
                  prefix: str = "") -> dict[str, Any]:
    """Widget name -> value of one node, taking ``values`` (its widgets_values) in frontend order: a seed's
    control_after_generate value after it is skipped; a DynamicCombo's value is followed by the widgets of the
    option it picks, named ``<combo>.<input>`` as in the API prompt."""
    found: dict[str, Any] = {}
    for section in ("required", "optional"):
        for name in (order or {}).get(section, spec.get(section, {})):
            declaration = spec[section][name]
            options = declaration[1] if len(declaration) > 1 else {}
            if declaration[0] != DYNAMIC_COMBO and not is_widget(declaration):
                continue
            found[prefix + name] = value = next(values)
            if options.get("control_after_generate") or name in SEEDS:
                next(values)
            if declaration[0] == DYNAMIC_COMBO:
                chosen = next(o for o in options["options"] if o["key"] == value)
                found.update(widget_values(chosen["inputs"], None, values, f"{prefix}{name}."))
    return found


def ui_to_api(graph: dict[str, Any], object_info: dict[str, Any], replace: dict[str, Any],
              shrink: bool = True) -> dict[str, Any]:
    """The API prompt of a UI-format workflow, shrunk (SHRINK, unless not ``shrink``) and with some widget values
    replaced (both by a widget's own name, the last part of a dotted one)."""
    links = {link[0]: link for link in graph["links"]}
    prompt = {}
    for node in graph["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        for name, value in widget_values(info["input"], info.get("input_order"), iter(node["widgets_values"])).items():
            own = name.rsplit(".", 1)[-1]
            inputs[name] = replace.get(own, SHRINK[own](value) if shrink and own in SHRINK else value)
        for socket in node["inputs"]:
            if socket.get("link") is not None:
                _, source, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@pytest.fixture(scope="module")
def object_info(comfy) -> dict[str, Any]:
    return comfy.client.object_info()


@pytest.fixture
def fresh_models(comfy) -> Path:
    """models/hspace_directions as on a fresh install: empty (what an earlier test saved is removed)."""
    folder = comfy.root / "base" / "models" / "hspace_directions"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def build_tiny_clip(folder: Path) -> Path:
    """A random CLIPModel with a character-level tokenizer, loadable offline by hspace_core's load_clip."""
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                               model_max_length=77).save_pretrained(folder)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = transformers.CLIPConfig(
        text_config={**small, "vocab_size": len(vocab), "max_position_embeddings": 77, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=8)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def replacements(comfy) -> dict[str, Any]:
    needs_clip = any("HSpaceAsyrpTrain" in path.read_text() for path in WORKFLOWS)
    clip = str(build_tiny_clip(comfy.root / "tiny_clip")) if needs_clip else ""
    return {"ckpt_name": comfy.checkpoint, "clip_model": clip}


def weight_files(graph: dict[str, Any]) -> set[str]:
    """The weight files a workflow's loaders name."""
    return {value for node in graph["nodes"] if node["type"] not in FRONTEND_ONLY for value in node["widgets_values"]
            if isinstance(value, str) and value.endswith(WEIGHT_SUFFIXES)}


RUN_HERE = [p for p in WORKFLOWS if weight_files(json.loads(p.read_text())) <= STAND_INS]
NEED_WEIGHTS = [p for p in WORKFLOWS if p not in RUN_HERE]


@pytest.mark.parametrize("path", RUN_HERE, ids=lambda p: p.stem)
def test_example_workflow_executes(comfy, object_info, fresh_models, replacements, path):
    graph = json.loads(path.read_text())
    missing = {n["type"] for n in graph["nodes"]} - set(object_info) - FRONTEND_ONLY
    assert not missing, f"ComfyUI does not know {missing}"
    prompt = ui_to_api(graph, object_info, replacements)
    outputs = comfy.client.run(prompt, timeout_s=900)
    saved = [node_id for node_id, node in prompt.items() if node["class_type"] == "SaveImage"]
    assert saved
    for node_id in saved:
        images = outputs[node_id]["images"]
        assert images and all((comfy.output_dir / i["subfolder"] / i["filename"]).is_file() for i in images)
    for node_id, node in prompt.items():
        if node["class_type"] == "HSpacePCA":
            assert outputs[node_id]["hspace_spectrum"][0]["explained_variance_ratio"]
        if node["class_type"] == "HSpaceStrengthSweep":
            assert outputs[node_id]["images"] and outputs[node_id]["hspace_sweep"]


def refusal(comfy, prompt: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's answer to a prompt it refuses at validation (POST /prompt answers 400 with the node errors)."""
    try:
        comfy.client._request("/prompt", {"prompt": prompt, "client_id": comfy.client.client_id})
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    raise AssertionError("ComfyUI queued the prompt although its weight files are absent")


@pytest.mark.parametrize("path", NEED_WEIGHTS, ids=lambda p: p.stem)
def test_an_example_needing_weights_is_refused_only_for_them(comfy, object_info, path):
    """On a fresh install every node type, link and widget value passes the server's validation except the weight
    files, which the first Note names."""
    graph = json.loads(path.read_text())
    missing = {n["type"] for n in graph["nodes"]} - set(object_info) - FRONTEND_ONLY
    assert not missing, f"ComfyUI does not know {missing}"
    needed = weight_files(graph)
    first_note = min((n for n in graph["nodes"] if n["type"] == "Note"), key=lambda n: n["id"])["widgets_values"][0]
    assert all(name in first_note for name in needed), (needed, first_note)
    answer = refusal(comfy, ui_to_api(graph, object_info, {}, shrink=False))
    refused = set()
    for node_id, entry in answer["node_errors"].items():
        for error in entry["errors"]:
            assert error["type"] == "value_not_in_list", (node_id, entry["class_type"], error)
            refused.add(error["extra_info"]["received_value"])
    assert refused == needed


def test_jacobian_and_pullback_on_a_checkpoint(comfy):
    """The autograd route for ComfyUI's own UNets (not a diffusers pixel model): the tiny SD1.5-layout checkpoint."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": comfy.checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "3": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "ddim_uniform", "steps": 2,
                                                         "denoise": 1.0}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "HSpaceJacobianDirections", "inputs": {
            "model": ["1", 0], "sigmas": ["3", 0], "latent_image": ["4", 0], "seed": 0,
            "num_vectors": 1, "step_index": 0, "method": "subspace", "max_iter": 2, "edit": ["2", 0],
            "clip": ["1", 1]}},
        "6": {"class_type": "HSpaceDirectionInfo", "inputs": {"direction": ["5", 0]}},
        "7": {"class_type": "HSpacePullbackEdit", "inputs": {
            "model": ["1", 0], "sigmas": ["3", 0], "latent_image": ["4", 0], "seed": 0, "t_edit": 800,
            "num_vectors": 1, "component": 0, "sign": "+", "guidance_strength": 0.1, "guidance_steps": 1,
            "t_boost": -1, "max_iter": 2, "edit": ["2", 0], "clip": ["1", 1]}},
        "8": {"class_type": "HSpaceDirectionInfo", "inputs": {"direction": ["7", 1]}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "hspace/pullback_sd"}},
    }
    outputs = comfy.client.run(prompt, timeout_s=600)
    assert "method: jacobian" in outputs["6"]["text"][0] and "model: " in outputs["6"]["text"][0]
    assert "method: pullback" in outputs["8"]["text"][0]
    assert torch.isfinite(comfy.client.latent(outputs["9"]["latents"][0])).all()


def test_every_template_thumbnail_the_frontend_requests_is_served(comfy):
    """Frontend 1.49 lists /workflow_templates and, for a pack's template, loads
    /api/workflow_templates/<pack>/<name>.jpg as its card and the file stem as its title."""
    templates = comfy.client.get_json("/workflow_templates")[comfy.pack_name]
    assert sorted(templates) == sorted(p.stem for p in WORKFLOWS)
    for name in templates:
        quoted = urllib.parse.quote(name)
        image = comfy.client._request(f"/api/workflow_templates/{comfy.pack_name}/{quoted}.jpg")
        assert image[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"
        graph = json.loads(comfy.client._request(f"/api/workflow_templates/{comfy.pack_name}/{quoted}.json"))
        assert graph["extra"]["hspace_title"] == name


def test_the_frontend_extension_and_node_docs_are_served(comfy, object_info):
    extensions = comfy.client.get_json("/extensions")
    assert any(path.endswith(f"/{comfy.pack_name}/js/hspace.js") for path in extensions), extensions
    from nodes.registry import NODE_CLASS_MAPPINGS

    assert set(NODE_CLASS_MAPPINGS) <= set(object_info)
    assert all(object_info[name]["category"].startswith("hspace/") for name in NODE_CLASS_MAPPINGS)
    assert object_info["HSpaceStrengthSweep"]["description"]
    sample = object_info["HSpaceInvertImage"]  # what the frontend reads for output tooltips and node search
    assert len(sample["output_tooltips"]) == len(sample["output"]) and "ddim inversion" in sample["search_aliases"]


def test_the_saved_copy_of_the_v3_schemas_is_what_comfyui_serves(object_info):
    """scripts/v3_node_info.json stands in for the V3 nodes' schemas where ComfyUI is absent (the workflow
    generator, the plain tests): it must be what this ComfyUI serves."""
    saved = json.loads((REPO / "scripts" / "v3_node_info.json").read_text())
    assert {"HSpaceInvertImage", "HSpaceSampleFromNoise", "HSpaceJoinDirections"} <= set(saved)
    for name, info in saved.items():
        assert {key: object_info[name].get(key) for key in info} == info, f"{name}: rerun scripts/make_workflows.py"
    modes = object_info["HSpaceSampleFromNoise"]["input"]["required"]["mode"]
    assert modes[0] == DYNAMIC_COMBO and [o["key"] for o in modes[1]["options"]] == ["ddim", "asymmetric", "symmetric"]
    assert object_info["HSpaceJoinDirections"]["input"]["required"]["directions"][0] == "COMFY_AUTOGROW_V3"


def execution_error(comfy, prompt: dict[str, Any], timeout_s: float = 120.0) -> str:
    """The exception message ComfyUI reports for a prompt that fails while executing."""
    prompt_id = comfy.client.queue_prompt(prompt)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = comfy.client.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry:
            errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
            assert errors, f"the prompt did not fail: {entry['status']}"
            return errors[0]["exception_message"]
        time.sleep(0.1)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout_s:.0f} s")


def test_bad_input_fails_with_a_clear_message(comfy):
    """HSpaceError messages reach ComfyUI's error report: an edit window outside the schedule, a foreign direction."""
    foreign = Direction(torch.ones(EMBEDDED_H_SHAPE), None, {"fingerprint": {"arch": "UNetModel", "weights": "0"}})
    save_direction(foreign, comfy.root / "base" / "models" / "hspace_directions" / "foreign.safetensors")
    base = {
        "1": {"class_type": "HSpacePixelModelLoader", "inputs": {"model_name": "hspace-mnist-16 (embedded)"}},
        "2": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "ddim_uniform", "steps": 4,
                                                         "denoise": 1.0}},
        "3": {"class_type": "HSpaceEmbeddedDigits", "inputs": {"digit": "3", "count": 1, "offset": 0}},
        "4": {"class_type": "HSpaceImageToPixelLatent", "inputs": {"image": ["3", 0], "model": ["1", 0]}},
        "5": {"class_type": "HSpaceInvertImage", "inputs": {
            "model": ["1", 0], "sigmas": ["2", 0], "latent": ["4", 0], "method": "ddim", "cfg": 1.0, "seed": 0}},
        "6": {"class_type": "HSpaceLoadDirection", "inputs": {"direction_name": "foreign.safetensors"}},
        "7": {"class_type": "HSpaceApplyDirection", "inputs": {
            "model": ["1", 0], "direction": ["6", 0], "strength": 1.0, "window": "direction", "start_percent": 0.0,
            "end_percent": 1.0, "rows": "cond", "allow_foreign": False}},
        "8": {"class_type": "HSpaceSampleFromNoise", "inputs": {
            "model": ["1", 0], "noise": ["5", 0], "mode": "asymmetric", "mode.t_edit": 900, "mode.t_boost": 0,
            "cfg": 1.0, "seed": 0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "hspace/bad"}},
    }
    assert "lies outside this schedule" in execution_error(comfy, base)
    foreign_prompt = {**base, "8": {**base["8"], "inputs": {**base["8"]["inputs"], "model": ["7", 0], "mode.t_edit": 400}}}
    assert "made for another model" in execution_error(comfy, foreign_prompt)


def test_v3_nodes_take_their_mode_inputs_and_grow(comfy):
    """The V3 nodes through ComfyUI's own execution: a DynamicCombo's inputs arrive under their option (an
    impossible boosting window refused at validation, before anything runs); Join Directions joins three sockets in
    order (Jacobian directions of an inverted image)."""
    base = {
        "1": {"class_type": "HSpacePixelModelLoader", "inputs": {"model_name": "hspace-mnist-16 (embedded)"}},
        "2": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "ddim_uniform", "steps": 3,
                                                         "denoise": 1.0}},
        "3": {"class_type": "HSpaceEmbeddedDigits", "inputs": {"digit": "3", "count": 1, "offset": 0}},
        "4": {"class_type": "HSpaceImageToPixelLatent", "inputs": {"image": ["3", 0], "model": ["1", 0]}},
        "5": {"class_type": "HSpaceInvertImage", "inputs": {
            "model": ["1", 0], "sigmas": ["2", 0], "latent": ["4", 0], "method": "edit_friendly",
            "method.eta": 1.0, "cfg": 1.0, "seed": 3}},
        "6": {"class_type": "HSpaceSampleFromNoise", "inputs": {
            "model": ["1", 0], "noise": ["5", 0], "mode": "asymmetric", "mode.t_edit": 300, "mode.t_boost": 400,
            "cfg": 1.0, "seed": 0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "hspace/v3"}},
    }
    answer = refusal(comfy, base)
    assert "must not exceed" in json.dumps(answer["node_errors"]["6"]), answer
    joined = {
        **{k: base[k] for k in ("1", "2", "3", "4", "5")},
        "6": {"class_type": "HSpaceJacobianDirections", "inputs": {
            "model": ["1", 0], "sigmas": ["2", 0], "latent_image": ["4", 0], "noise": ["5", 0], "seed": 0, "num_vectors": 2,
            "step_index": 0, "method": "subspace", "max_iter": 2}},
        "7": {"class_type": "HSpacePickDirection", "inputs": {"directions": ["6", 0], "index": 1}},
        "8": {"class_type": "HSpaceJoinDirections", "inputs": {
            "directions.direction0": ["7", 0], "directions.direction1": ["6", 0], "directions.direction2": ["7", 0]}},
        "9": {"class_type": "HSpaceDirectionInfo", "inputs": {"direction": ["8", 0]}},
    }
    text = comfy.client.run(joined, timeout_s=300)["9"]["text"][0]
    assert [line for line in text.splitlines() if line.startswith("[")] == ["[0]", "[1]", "[2]", "[3]"]
    assert text.count("method: jacobian") == 4 and text.count("component: 1") == 3
