"""Write example_workflows/*.json (ComfyUI UI format, version 0.4), same-name .jpg thumbnails and a README.

ComfyUI's Templates browser (frontend 1.49) lists a pack's example_workflows/*.json by file stem, shows the
stem as the card's title and loads ``<stem>.jpg`` as its thumbnail, so each file is named by its readable
title (:attr:`Workflow.file_stem`).

Each workflow is described compactly below (nodes with their widget values and links); the sockets, widget
order and output types come from the node declarations of this pack (nodes/registry.py) and, for ComfyUI core
nodes, from CORE_NODES, so the files stay consistent with the code. Run from anywhere:

    python scripts/make_workflows.py

The V3 nodes' declarations need ComfyUI's comfy_api: run inside ComfyUI's Python with ``COMFYUI_PATH`` set
and the script also rewrites scripts/v3_node_info.json, the copy it reads where ComfyUI is absent.
"""
from __future__ import annotations

import json
import os
import sys
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("COMFYUI_PATH"):  # ComfyUI's comfy_api gives the V3 nodes' schemas
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
if "hspace_pack" not in sys.modules:  # the repository root as a package, the way ComfyUI imports the pack folder
    _pack = types.ModuleType("hspace_pack")
    _pack.__path__ = [str(ROOT)]
    sys.modules["hspace_pack"] = _pack

from hspace_pack.nodes import _v3  # noqa: E402
from hspace_pack.nodes.pixel_model import EMBEDDED, EMBEDDED_DIT  # noqa: E402
from hspace_pack.nodes.registry import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

OUT_DIR = ROOT / "example_workflows"
V3_INFO = ROOT / "scripts" / "v3_node_info.json"
DYNAMIC_COMBO, AUTOGROW = "COMFY_DYNAMICCOMBO_V3", "COMFY_AUTOGROW_V3"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_NAMES = {"seed", "noise_seed"}
NOTE = "Note"  # a frontend-only node holding text

# ComfyUI core nodes: (socket inputs, widget inputs with defaults, outputs), as ComfyUI declares them.
CORE_NODES: dict[str, tuple[list[tuple[str, str]], list[tuple[str, Any]], list[tuple[str, str]]]] = {
    "CheckpointLoaderSimple": ([], [("ckpt_name", "v1-5-pruned-emaonly.safetensors")],
                               [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("text", "")], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], [("width", 512), ("height", 512), ("batch_size", 1)], [("LATENT", "LATENT")]),
    "BasicScheduler": ([("model", "MODEL")], [("scheduler", "ddim_uniform"), ("steps", 20), ("denoise", 1.0)],
                       [("SIGMAS", "SIGMAS")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")],
                 [("seed", 0), ("steps", 20), ("cfg", 8.0), ("sampler_name", "euler"), ("scheduler", "normal"),
                  ("denoise", 1.0)], [("LATENT", "LATENT")]),
    "SamplerCustom": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"), ("latent_image", "LATENT")],
                      [("add_noise", True), ("noise_seed", 0), ("cfg", 8.0)],
                      [("output", "LATENT"), ("denoised_output", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "UNETLoader": ([], [("unet_name", "flux1-dev.safetensors"), ("weight_dtype", "default")], [("MODEL", "MODEL")]),
    "DualCLIPLoader": ([], [("clip_name1", "clip_l.safetensors"), ("clip_name2", "t5xxl_fp16.safetensors"),
                            ("type", "flux"), ("device", "default")], [("CLIP", "CLIP")]),
    "VAELoader": ([], [("vae_name", "ae.safetensors")], [("VAE", "VAE")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("guidance", 3.5)], [("CONDITIONING", "CONDITIONING")]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING")], [], [("CONDITIONING", "CONDITIONING")]),
    "EmptySD3LatentImage": ([], [("width", 1024), ("height", 1024), ("batch_size", 1)], [("LATENT", "LATENT")]),
    "SaveImage": ([("images", "IMAGE")], [("filename_prefix", "ComfyUI")], []),
    NOTE: ([], [("text", "")], []),
}
TYPE_COLOURS = {"MODEL": "#b39ddb", "LATENT": "#ff9cf9", "IMAGE": "#64b5f6", "CONDITIONING": "#ffa931",
                "SIGMAS": "#cddc39", "SAMPLER": "#ecb4b4", "CLIP": "#ffd500", "VAE": "#ff6e6e",
                "HSPACE_DIRECTION": "#4db6ac", "HSPACE_TRAJECTORY": "#81c784", "HSPACE_NOISE": "#a1887f"}


# -- node interfaces -------------------------------------------------------------------------------------
@dataclass
class Interface:
    sockets: list[tuple[str, str]]
    widgets: list[tuple[str, Any, bool]]  # name, default, followed by a control_after_generate value
    outputs: list[tuple[str, str]]


INFO_KEYS = ("input", "output", "output_name", "output_tooltips", "display_name", "category", "description",
             "search_aliases")


def node_info(node_type: str) -> dict[str, Any]:
    """A pack node's declaration in /object_info's form (INFO_KEYS; ``input`` holds sections of V1 specs, a V3 node's
    dynamic inputs as COMFY_DYNAMICCOMBO_V3 / COMFY_AUTOGROW_V3). A V3 node's comes from its schema inside ComfyUI,
    otherwise from V3_INFO, the copy written when this script last ran there."""
    cls = NODE_CLASS_MAPPINGS[node_type]
    if not _v3.is_v3(cls):
        return {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
                "output_tooltips": list(getattr(cls, "OUTPUT_TOOLTIPS", [])),
                "display_name": NODE_DISPLAY_NAME_MAPPINGS[node_type], "category": cls.CATEGORY,
                "description": cls.DESCRIPTION, "search_aliases": list(getattr(cls, "SEARCH_ALIASES", []))}
    if _v3.io is not None:
        info = cls.GET_NODE_INFO_V1()
        return {key: info.get(key) for key in INFO_KEYS}
    saved = json.loads(V3_INFO.read_text()) if V3_INFO.exists() else {}
    if node_type not in saved:
        raise SystemExit(f"{node_type} is a V3 node missing from {V3_INFO.name}: run this script with ComfyUI "
                         "importable (COMFYUI_PATH=<ComfyUI checkout>, in ComfyUI's Python)")
    return saved[node_type]


def v3_info() -> dict[str, dict[str, Any]]:
    """Every V3 node's declaration (needs ComfyUI), the content of V3_INFO."""
    return {name: node_info(name) for name, cls in sorted(NODE_CLASS_MAPPINGS.items()) if _v3.is_v3(cls)}


def _expand(spec: dict[str, Any], values: dict[str, Any], prefix: str, face: Interface) -> None:
    """Sockets and widgets of input sections in the frontend's order: a DynamicCombo's widget, then the inputs of
    its chosen option (``<combo>.<input>``); an Autogrow's connected sockets (``<name>.<prefix><i>``) and one
    empty one after them, at least its minimum."""
    for section in ("required", "optional"):
        for name, declaration in spec.get(section, {}).items():
            kind, options = declaration[0], (declaration[1] if len(declaration) > 1 else {})
            full = f"{prefix}{name}"
            if kind == DYNAMIC_COMBO:
                keys = [option["key"] for option in options["options"]]
                face.widgets.append((full, keys[0], False))
                choice = values.get(full, keys[0])
                _expand(options["options"][keys.index(choice)]["inputs"], values, f"{full}.", face)
            elif kind == AUTOGROW:
                template = options["template"]
                (slot_kind, *_), = [d for section in template["input"].values() for d in section.values()]
                names = [f"{full}.{template['prefix']}{i}" for i in range(template["max"])]
                used = [i for i, n in enumerate(names) if n in values]
                shown = min(len(names), max(template["min"], used[-1] + 2 if used else 1))
                face.sockets += [(n, slot_kind) for n in names[:shown]]
            elif isinstance(kind, (list, tuple)) or kind == "COMBO":
                choices = kind if isinstance(kind, (list, tuple)) else options.get("options", [])
                face.widgets.append((full, options.get("default", choices[0] if choices else ""), False))
            elif kind in WIDGET_TYPES:
                control = bool(options.get("control_after_generate")) or name in SEED_NAMES
                face.widgets.append((full, options.get("default"), control))
            else:
                face.sockets.append((full, kind))


def interface(node_type: str, values: dict[str, Any] | None = None) -> Interface:
    """A node's sockets, widgets and outputs; ``values`` (the node's) pick a DynamicCombo's option and say how many
    of an Autogrow's sockets are connected."""
    if node_type in CORE_NODES:
        sockets, widgets, outputs = CORE_NODES[node_type]
        return Interface(list(sockets), [(n, d, n in SEED_NAMES) for n, d in widgets], list(outputs))
    info = node_info(node_type)
    face = Interface([], [], list(zip(info["output_name"], info["output"])))
    _expand(info["input"], values or {}, "", face)
    return face


# -- compact descriptions ------------------------------------------------------------------------------------
class N:
    """One node: its id, type, and keyword values: ``(node_id, output_slot)`` for sockets, else widget values."""

    def __init__(self, id: int, type: str, /, **values: Any):  # positional: a widget may be named type
        self.id, self.type, self.values = id, type, values


@dataclass
class Workflow:
    name: str  # a short id (the workflow's uuid is derived from it)
    title: str  # the file stem, hence the Templates browser's card title
    nodes: list[N]

    @property
    def file_stem(self) -> str:
        if any(c in self.title for c in '/\\:*?"<>|,'):
            raise ValueError(f"{self.title!r} cannot be a portable file name")
        return self.title


def note(id: int, text: str) -> N:
    return N(id, NOTE, text=text)


def embedded_loader(id: int) -> N:
    return N(id, "HSpacePixelModelLoader", model_name=EMBEDDED)


def ddim_schedule(id: int, model: int, steps: int) -> N:
    return N(id, "BasicScheduler", model=(model, 0), scheduler="ddim_uniform", steps=steps, denoise=1.0)


def empty_pixels(id: int, batch: int) -> N:
    return N(id, "EmptyLatentImage", width=16, height=16, batch_size=batch)


def capture_and_pca(first: int, model: int, sigmas: int, num_samples: int, components: int,
                    store: str = "memory") -> list[N]:
    return [empty_pixels(first, 16),
            N(first + 1, "HSpaceCaptureH", model=(model, 0), sigmas=(sigmas, 0), latent_image=(first, 0),
              num_samples=num_samples, seed=0, store=store),
            N(first + 2, "HSpacePCA", trajectory=(first + 1, 0), num_components=components)]


def save_pixels(id: int, samples: tuple[int, int], prefix: str) -> list[N]:
    return [N(id, "HSpacePixelLatentToImage", samples=samples),
            N(id + 1, "SaveImage", images=(id, 0), filename_prefix=prefix)]


def asyrp_edit_beside_plain(first: int, model: int, sigmas: int, latent: int, positive: tuple[int, int],
                            negative: tuple[int, int], vae: tuple[int, int], cfg: float, prefix: str) -> list[N]:
    """Capture h of 8 samples, PCA, component 0 applied at strength 3 and sampled with the Asyrp Sampler (edit for
    t >= 500) beside the same noise sampled unedited, both decoded and saved."""
    conditioning = {"positive": positive, "negative": negative}
    return [
        N(first, "HSpaceCaptureH", model=(model, 0), sigmas=(sigmas, 0), latent_image=(latent, 0), num_samples=8,
          seed=0, cfg=cfg, **conditioning),
        N(first + 1, "HSpacePCA", trajectory=(first, 0), num_components=4),
        N(first + 2, "HSpacePickDirection", directions=(first + 1, 0), index=0),
        N(first + 3, "HSpaceApplyDirection", model=(model, 0), direction=(first + 2, 0), strength=3.0),
        N(first + 4, "HSpaceAsyrpSampler", model=(model, 0), mode="asymmetric", t_edit=500, t_boost=0),
        N(first + 5, "SamplerCustom", model=(first + 3, 0), add_noise=True, noise_seed=42, cfg=cfg,
          sampler=(first + 4, 0), sigmas=(sigmas, 0), latent_image=(latent, 0), **conditioning),
        N(first + 6, "VAEDecode", samples=(first + 5, 0), vae=vae),
        N(first + 7, "SaveImage", images=(first + 6, 0), filename_prefix=f"{prefix}_edited"),
        N(first + 8, "SamplerCustom", model=(model, 0), add_noise=True, noise_seed=42, cfg=cfg,
          sampler=(first + 4, 0), sigmas=(sigmas, 0), latent_image=(latent, 0), **conditioning),
        N(first + 9, "VAEDecode", samples=(first + 8, 0), vae=vae),
        N(first + 10, "SaveImage", images=(first + 9, 0), filename_prefix=f"{prefix}_original"),
    ]


TRANSFORMER_SIZES = ("Sized for a GPU: 512 x 512, 20 steps, 8 captured samples (h of the capture: about {gb} GB of "
                     "RAM; at 1024 x 1024, the model's native size, 4x that); a CPU is far too slow for a model this "
                     "size. Capture h and both samplers share the one Empty SD3 Latent Image and BasicScheduler: a "
                     "direction holds a vector per step and image token, so change the size or steps there only.")

WORKFLOWS = [
    Workflow("pca_edit_embedded", "PCA directions and strength sweep (embedded digits)", [
        note(1, "Needs nothing to download: the embedded 16x16 digit DDPM (CPU, about a minute). Capture h of 64 samples (saved for "
                "Load Trajectory), PCA per timestep, then sweep the first component from -3 to +3 standard "
                "deviations."),
        embedded_loader(2), ddim_schedule(3, 2, 10), *capture_and_pca(4, 2, 3, 64, 8),
        N(7, "HSpacePickDirection", directions=(6, 0), index=0),
        empty_pixels(8, 4),
        N(9, "HSpaceStrengthSweep", model=(2, 0), direction=(7, 0), sigmas=(3, 0), latent_image=(8, 0), seed=1,
          strength_min=-3.0, strength_max=3.0, count=7),
        N(10, "SaveImage", images=(9, 0), filename_prefix="hspace/pca_sweep"),
        N(11, "HSpaceSaveTrajectory", trajectory=(5, 0), filename_prefix="hspace_trajectories/embedded_64"),
    ]),
    Workflow("evaluate_direction_embedded", "Measuring what a direction changes (embedded digits)", [
        note(1, "Needs nothing to download: the embedded 16x16 digit DDPM and the shipped digit classifier (CPU, "
                "a few minutes). PCA component 0 of 64 captured samples, then Evaluate Direction edits 16 "
                "held-out seeds at -2, -1, +1, +2 and reports, per strength, how often slant moved the intended "
                "way, the effect against random directions of the same norm, the class kept and every other "
                "attribute's change. Raise samples for firmer numbers."),
        embedded_loader(2), ddim_schedule(3, 2, 10), *capture_and_pca(4, 2, 3, 64, 4),
        N(7, "HSpacePickDirection", directions=(6, 0), index=0),
        N(8, "HSpaceEvaluateDirection", direction=(7, 0), target="slant", samples=16, first_seed=100000, steps=10,
          random_directions=1, allow_foreign=False),
        N(9, "SaveImage", images=(8, 1), filename_prefix="hspace/evaluation_chart"),
    ]),
    Workflow("real_image_inversion_edit", "Real image inversion and Asyrp edit (embedded digits)", [
        note(1, "Needs nothing to download (the embedded digit DDPM and its held-out digits; CPU). Invert real held-out digits exactly (edit-friendly DDPM inversion), reconstruct them, and edit "
                "them along PCA component 0 with Asyrp's asymmetric process (edit for t >= t_edit)."),
        embedded_loader(2), ddim_schedule(3, 2, 20),
        N(4, "HSpaceEmbeddedDigits", digit="3", count=4, offset=0),
        N(5, "HSpaceImageToPixelLatent", image=(4, 0), model=(2, 0)),
        N(6, "HSpaceInvertImage", model=(2, 0), sigmas=(3, 0), latent=(5, 0), method="edit_friendly",
          seed=0),
        N(7, "HSpaceSampleFromNoise", model=(2, 0), noise=(6, 0), mode="ddim"),
        *save_pixels(8, (7, 0), "hspace/reconstruction"),
        *capture_and_pca(10, 2, 3, 64, 4),
        N(13, "HSpacePickDirection", directions=(12, 0), index=0),
        N(14, "HSpaceApplyDirection", model=(2, 0), direction=(13, 0), strength=5.0),
        N(15, "HSpaceSampleFromNoise", model=(14, 0), noise=(6, 0), mode="asymmetric", **{"mode.t_edit": 400}),
        *save_pixels(16, (15, 0), "hspace/edited"),
    ]),
    Workflow("supervised_disentangle", "Supervised direction disentangled by projection (embedded digits)", [
        note(1, "Needs nothing to download (the embedded digit DDPM, its digits and digit classifier; CPU). Invert 16 real '7's and 16 real '1's, take the mean difference of their h (Haas et al.), project "
                "out jointly PCA component 0 of generated samples and a classifier-annotated '0' direction (top "
                "minus bottom scored samples), and sweep the result."),
        embedded_loader(2), ddim_schedule(3, 2, 10),
        N(4, "HSpaceEmbeddedDigits", digit="7", count=16, offset=0),
        N(5, "HSpaceImageToPixelLatent", image=(4, 0), model=(2, 0)),
        N(6, "HSpaceInvertImage", model=(2, 0), sigmas=(3, 0), latent=(5, 0), method="ddim"),
        N(7, "HSpaceEmbeddedDigits", digit="1", count=16, offset=0),
        N(8, "HSpaceImageToPixelLatent", image=(7, 0), model=(2, 0)),
        N(9, "HSpaceInvertImage", model=(2, 0), sigmas=(3, 0), latent=(8, 0), method="ddim"),
        N(10, "HSpaceSupervisedDirection", positive=(6, 1), negative=(9, 1), method="mean_difference"),
        *capture_and_pca(11, 2, 3, 48, 4),
        N(14, "HSpacePickDirection", directions=(13, 0), index=0),
        N(20, "HSpaceDigitClassifierDirection", trajectory=(12, 0), samples=(12, 1), digit="0", k=8),
        N(21, "HSpaceJoinDirections", **{"directions.direction0": (14, 0), "directions.direction1": (20, 0)}),
        N(15, "HSpaceProjectOutDirections", direction=(10, 0), conditions=(21, 0)),
        N(16, "HSpaceDirectionInfo", direction=(15, 0)),
        N(22, "HSpaceCompareDirections", a=(15, 0), b=(20, 0)),
        empty_pixels(17, 4),
        N(18, "HSpaceStrengthSweep", model=(2, 0), direction=(15, 0), sigmas=(3, 0), latent_image=(17, 0), seed=2,
          strength_min=-1.0, strength_max=1.0, count=5),
        N(19, "SaveImage", images=(18, 0), filename_prefix="hspace/supervised_sweep"),
    ]),
    Workflow("jacobian_edit", "Jacobian directions of one image (embedded digits)", [
        note(1, "Needs nothing to download (the embedded digit DDPM; CPU). Haas et al.: find the top singular vectors of d eps / d h along one sample's run and sweep the first one on "
                "that same sample (same seed). The direction is the unit vector times each step's singular value, "
                "small for this model (about 0.02-0.15), hence strengths in the hundreds."),
        embedded_loader(2), ddim_schedule(3, 2, 10), empty_pixels(4, 1),
        N(5, "HSpaceJacobianDirections", model=(2, 0), sigmas=(3, 0), latent_image=(4, 0), seed=7,
          num_vectors=3, max_iter=30),
        N(6, "HSpacePickDirection", directions=(5, 0), index=0),
        N(7, "HSpaceStrengthSweep", model=(2, 0), direction=(6, 0), sigmas=(3, 0), latent_image=(4, 0), seed=7,
          strength_min=-600.0, strength_max=600.0, count=5),
        N(8, "SaveImage", images=(7, 0), filename_prefix="hspace/jacobian_sweep"),
    ]),
    Workflow("pullback_edit", "Pullback basis and x-space guidance (embedded digits)", [
        note(1, "Needs nothing to download (the embedded digit DDPM; CPU). Park et al.: run one sample to t_edit, find the local basis of x-space from the Jacobian of the encoder "
                "x -> h, move both ways along the first basis vector with x-space guidance, finish with DDIM."),
        embedded_loader(2), ddim_schedule(3, 2, 20), empty_pixels(4, 1),
        N(5, "HSpacePullbackEdit", model=(2, 0), sigmas=(3, 0), latent_image=(4, 0), seed=3, sign="+",
          t_boost=200, max_iter=30),
        N(6, "HSpacePullbackEdit", model=(2, 0), sigmas=(3, 0), latent_image=(4, 0), seed=3, sign="-",
          t_boost=200, max_iter=30),
        *save_pixels(7, (5, 0), "hspace/pullback_plus"),
        *save_pixels(9, (6, 0), "hspace/pullback_minus"),
    ]),
    Workflow("asyrp_train_embedded", "Asyrp training with CLIP (embedded digits)", [
        note(1, "Needs CLIP weights: a transformers CLIP folder (for example openai/clip-vit-base-patch16) named in "
                "clip_model (a local path or a Hugging Face id in the local cache; transformers is part of "
                "ComfyUI), or openai/clip-vit-large-patch14's model.safetensors in models/clip_vision and "
                "models/text_encoders, loaded with Load CLIP Vision and Load CLIP (stable_diffusion) into "
                "clip_vision and clip (an SD1.5 checkpoint's CLIP lacks the text projection). Inverts 8 real digits with DDIM, trains Asyrp's f_t from 'a digit' to 'a bold digit' "
                "for t >= 500, and edits the same digits with the averaged direction."),
        embedded_loader(2), ddim_schedule(3, 2, 20),
        N(4, "HSpaceEmbeddedDigits", digit="3", count=8, offset=0),
        N(5, "HSpaceImageToPixelLatent", image=(4, 0), model=(2, 0)),
        N(6, "HSpaceInvertImage", model=(2, 0), sigmas=(3, 0), latent=(5, 0), method="ddim"),
        N(7, "HSpaceAsyrpTrain", model=(2, 0), noise=(6, 0), t_edit=500),
        N(8, "HSpaceDirectionInfo", direction=(7, 0)),
        N(9, "HSpaceSaveDirection", direction=(7, 0), filename="hspace_examples/asyrp_bold", overwrite=True),
        N(10, "HSpaceApplyDirection", model=(2, 0), direction=(7, 0), strength=1.0),
        N(11, "HSpaceSampleFromNoise", model=(10, 0), noise=(6, 0), mode="asymmetric", **{"mode.t_edit": 500}),
        *save_pixels(12, (11, 0), "hspace/asyrp_trained"),
    ]),
    Workflow("dit_pca_asyrp_embedded", "PCA directions and Asyrp edit on a transformer (embedded digit DiT)", [
        note(1, "Needs nothing to download: the embedded 16x16 digit flow-matching DiT, a transformer hooked at the "
                "output of its middle block (transformer_blocks.2, 64 image tokens of width 96) through ComfyUI's "
                "block replacements; CPU, under a minute. Capture h of 32 samples, PCA per timestep, sweep "
                "component 0 from -3 to +3 standard deviations, and sample with it through the Asyrp Sampler (edit "
                "for t >= 500) beside the unedited digits. Flow models sample on the simple scheduler."),
        N(2, "HSpacePixelModelLoader", model_name=EMBEDDED_DIT),
        N(3, "BasicScheduler", model=(2, 0), scheduler="simple", steps=20, denoise=1.0),
        *capture_and_pca(4, 2, 3, 32, 4),
        N(7, "HSpacePickDirection", directions=(6, 0), index=0),
        empty_pixels(8, 4),
        N(9, "HSpaceStrengthSweep", model=(2, 0), direction=(7, 0), sigmas=(3, 0), latent_image=(8, 0), seed=1,
          strength_min=-3.0, strength_max=3.0, count=5),
        N(10, "SaveImage", images=(9, 0), filename_prefix="hspace/dit_pca_sweep"),
        N(11, "HSpaceApplyDirection", model=(2, 0), direction=(7, 0), strength=3.0),
        N(12, "HSpaceAsyrpSampler", model=(2, 0), mode="asymmetric", t_edit=500, t_boost=0),
        N(13, "HSpaceUnconditional"),
        empty_pixels(14, 4),
        N(15, "SamplerCustom", model=(11, 0), add_noise=True, noise_seed=42, cfg=1.0, positive=(13, 0),
          negative=(13, 0), sampler=(12, 0), sigmas=(3, 0), latent_image=(14, 0)),
        *save_pixels(16, (15, 0), "hspace/dit_asyrp_edited"),
        N(18, "SamplerCustom", model=(2, 0), add_noise=True, noise_seed=42, cfg=1.0, positive=(13, 0),
          negative=(13, 0), sampler=(12, 0), sigmas=(3, 0), latent_image=(14, 0)),
        *save_pixels(19, (18, 0), "hspace/dit_original"),
    ]),
    Workflow("asyrp_sd15", "Asyrp sampler on Stable Diffusion 1.5", [
        note(1, "Needs v1-5-pruned-emaonly.safetensors in models/checkpoints. Capture h of 8 samples, take PCA "
                "component 1, patch the model with it and sample with the Asyrp SAMPLER (edit for t >= 500, "
                "quality boosting below 200) next to the unedited image. Sized for a CPU (256 px, 10 steps: a few "
                "minutes). On a GPU raise both Empty Latent Image nodes to 512 x 512 (batch 4 for the capture), "
                "BasicScheduler steps to 40 and Capture h num_samples to 32."),
        N(2, "CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors"),
        N(3, "CLIPTextEncode", clip=(2, 1), text="a portrait photo of a person, studio light"),
        N(4, "CLIPTextEncode", clip=(2, 1), text="blurry, lowres"),
        N(5, "BasicScheduler", model=(2, 0), scheduler="ddim_uniform", steps=10, denoise=1.0),
        N(6, "EmptyLatentImage", width=256, height=256, batch_size=4),
        N(7, "HSpaceCaptureH", model=(2, 0), sigmas=(5, 0), latent_image=(6, 0), num_samples=8, seed=0, cfg=7.0,
          positive=(3, 0), negative=(4, 0)),
        N(8, "HSpacePCA", trajectory=(7, 0), num_components=4),
        N(9, "HSpacePickDirection", directions=(8, 0), index=1),
        N(10, "HSpaceApplyDirection", model=(2, 0), direction=(9, 0), strength=4.0),
        N(11, "HSpaceAsyrpSampler", model=(2, 0), mode="asymmetric", t_edit=500, t_boost=200),
        N(12, "EmptyLatentImage", width=256, height=256, batch_size=1),
        N(13, "SamplerCustom", model=(10, 0), add_noise=True, noise_seed=42, cfg=7.0, positive=(3, 0),
          negative=(4, 0), sampler=(11, 0), sigmas=(5, 0), latent_image=(12, 0)),
        N(14, "VAEDecode", samples=(13, 0), vae=(2, 2)),
        N(15, "SaveImage", images=(14, 0), filename_prefix="hspace/asyrp_edited"),
        N(16, "SamplerCustom", model=(2, 0), add_noise=True, noise_seed=42, cfg=7.0, positive=(3, 0),
          negative=(4, 0), sampler=(11, 0), sigmas=(5, 0), latent_image=(12, 0)),
        N(17, "VAEDecode", samples=(16, 0), vae=(2, 2)),
        N(18, "SaveImage", images=(17, 0), filename_prefix="hspace/asyrp_original"),
    ]),
    Workflow("asyrp_flux", "PCA direction and Asyrp edit on Flux", [
        note(1, "Needs the files of ComfyUI's own Flux example: flux1-dev.safetensors in models/diffusion_models, "
                "clip_l.safetensors and t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn_scaled.safetensors) in "
                "models/text_encoders, ae.safetensors in models/vae (flux1-schnell.safetensors also works: 4 steps). "
                "Capture h at the middle double block (auto: double_blocks.9.output, the image tokens), take PCA "
                "component 0, patch the model with it and sample with the Asyrp Sampler (edit for t >= 500) beside "
                "the unedited image. Flux is guidance-distilled: cfg 1 with Flux Guidance 3.5 and the negative "
                "zeroed, as in ComfyUI's example; flow steps on the simple scheduler. "
                + TRANSFORMER_SIZES.format(gb="2.0")),
        N(2, "UNETLoader", unet_name="flux1-dev.safetensors", weight_dtype="default"),
        N(3, "DualCLIPLoader", clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux"),
        N(4, "VAELoader", vae_name="ae.safetensors"),
        N(5, "CLIPTextEncode", clip=(3, 0), text="a portrait photo of a person, studio light"),
        N(6, "FluxGuidance", conditioning=(5, 0), guidance=3.5),
        N(7, "ConditioningZeroOut", conditioning=(5, 0)),
        N(8, "BasicScheduler", model=(2, 0), scheduler="simple", steps=20, denoise=1.0),
        N(9, "EmptySD3LatentImage", width=512, height=512, batch_size=1),
        *asyrp_edit_beside_plain(10, 2, 8, 9, (6, 0), (7, 0), (4, 0), 1.0, "hspace/flux"),
    ]),
    Workflow("asyrp_sd35", "PCA direction and Asyrp edit on SD3.5", [
        note(1, "Needs sd3.5_large_fp8_scaled.safetensors (text encoders included; the checkpoint of ComfyUI's own "
                "SD3.5 example) in models/checkpoints; any SD3 / SD3.5 checkpoint with its text encoders works the "
                "same. Capture h at the middle joint block (auto: joint_blocks.19.output for SD3.5 Large, the image "
                "tokens), take PCA component 0, patch the model with it and sample with the Asyrp Sampler (edit for "
                "t >= 500) beside the unedited image; cfg 4 and flow steps on the sgm_uniform scheduler, as in "
                "ComfyUI's example. " + TRANSFORMER_SIZES.format(gb="1.6")),
        N(2, "CheckpointLoaderSimple", ckpt_name="sd3.5_large_fp8_scaled.safetensors"),
        N(3, "CLIPTextEncode", clip=(2, 1), text="a portrait photo of a person, studio light"),
        N(4, "CLIPTextEncode", clip=(2, 1), text=""),
        N(5, "BasicScheduler", model=(2, 0), scheduler="sgm_uniform", steps=20, denoise=1.0),
        N(6, "EmptySD3LatentImage", width=512, height=512, batch_size=1),
        *asyrp_edit_beside_plain(7, 2, 5, 6, (3, 0), (4, 0), (2, 2), 4.0, "hspace/sd35"),
    ]),
    Workflow("direction_arithmetic_save_load", "Direction arithmetic and saving (embedded digits)", [
        note(1, "Needs nothing to download (the embedded digit DDPM; CPU). Capture h to disk "
                "(output/hspace_trajectories, streamed to PCA a shard at a time), combine PCA components (slerp, "
                "normalize, scale, Gram-Schmidt, add), save the result to models/hspace_directions and sample "
                "with it through a plain KSampler."),
        note(25, "To reuse the saved direction in another workflow: add Load Direction (hspace); after this run "
                 "(press R to refresh the lists) it offers hspace_examples/mix.safetensors."),
        embedded_loader(2), ddim_schedule(3, 2, 10), *capture_and_pca(4, 2, 3, 48, 6, store="disk"),
        N(7, "HSpacePickDirection", directions=(6, 0), index=0),
        N(8, "HSpacePickDirection", directions=(6, 0), index=1),
        N(9, "HSpaceSlerpDirections", a=(7, 0), b=(8, 0), t=0.5),
        N(10, "HSpaceNormalizeDirection", direction=(9, 0)),
        N(11, "HSpaceScaleDirection", direction=(10, 0), factor=3.0),
        N(12, "HSpaceJoinDirections", **{"directions.direction0": (7, 0), "directions.direction1": (8, 0)}),
        N(13, "HSpaceOrthogonalizeDirections", directions=(12, 0)),
        N(14, "HSpacePickDirection", directions=(13, 0), index=1),
        N(15, "HSpaceAddDirections", a=(11, 0), b=(14, 0)),
        N(16, "HSpaceSaveDirection", direction=(15, 0), filename="hspace_examples/mix", overwrite=True),
        N(17, "HSpaceDirectionInfo", direction=(15, 0)),
        N(19, "HSpaceApplyDirection", model=(2, 0), direction=(15, 0), strength=1.0),
        N(20, "HSpaceUnconditional"),
        empty_pixels(21, 4),
        N(22, "KSampler", model=(19, 0), positive=(20, 0), negative=(20, 0), latent_image=(21, 0), seed=0,
          steps=10, cfg=1.0, sampler_name="ddim", scheduler="ddim_uniform"),
        *save_pixels(23, (22, 0), "hspace/mixed_direction"),
    ]),
]


# -- UI format -------------------------------------------------------------------------------------------------
# Height a node takes once it has run (its output: spectrum chart, metadata, previews), measured in ComfyUI
# 0.33.0 / frontend 1.49.6 with headless Chromium (PCA: its widgets plus the 400x180 chart at the node's width,
# computed); nodes below it are placed past that. Sample From Noise (4 original/result pairs), Pullback Edit (its
# report and one pair) and Pixel Latent to Image (4 images): the height in the Vue renderer, the taller of the two.
HEIGHT_AFTER_RUN = {"HSpacePCA": 390, "HSpaceLoadDirection": 307, "HSpaceDirectionInfo": 216,
                    "HSpaceStrengthSweep": 711, "SaveImage": 270, "HSpaceSampleFromNoise": 520,
                    "HSpacePullbackEdit": 730, "HSpacePixelLatentToImage": 330}


NOTE_WIDTH, NOTE_CHARS_PER_LINE, NOTE_LINE_HEIGHT = 360, 40, 18  # generous: the text never needs a scroll bar


def _size(face: Interface, node: N) -> list[int]:
    if node.type == NOTE:
        lines = sum(-(-max(len(line), 1) // NOTE_CHARS_PER_LINE) for line in node.values["text"].split("\n"))
        return [NOTE_WIDTH, 40 + NOTE_LINE_HEIGHT * lines]
    rows = max(len(face.sockets), len(face.outputs))
    return [340, 46 + 22 * rows + 26 * len(face.widgets)]


def _depths(nodes: list[N]) -> dict[int, int]:
    by_id = {n.id: n for n in nodes}
    depths: dict[int, int] = {}

    def depth(node_id: int) -> int:
        if node_id not in depths:
            sources = [v[0] for v in by_id[node_id].values.values() if isinstance(v, tuple)]
            depths[node_id] = 1 + max((depth(s) for s in sources), default=-1)
        return depths[node_id]

    for n in nodes:
        depth(n.id)
    return depths


def build(workflow: Workflow) -> dict[str, Any]:
    faces = {n.id: interface(n.type, n.values) for n in workflow.nodes}
    depths = _depths(workflow.nodes)
    order = sorted(workflow.nodes, key=lambda n: (depths[n.id], n.id))
    links: list[list[Any]] = []
    column_y: dict[int, int] = {}
    ui_nodes = []
    for n in workflow.nodes:
        face = faces[n.id]
        unknown = set(n.values) - {s for s, _ in face.sockets} - {w for w, _, _ in face.widgets}
        if unknown:
            raise ValueError(f"{workflow.name}: node {n.id} ({n.type}) has no inputs {sorted(unknown)}")
    for n in order:
        face = faces[n.id]
        inputs = []
        for slot, (name, kind) in enumerate(face.sockets):
            source = n.values.get(name)
            link_id = None
            if source is not None:
                link_id = len(links) + 1
                from_id, from_slot = source
                links.append([link_id, from_id, from_slot, n.id, slot, faces[from_id].outputs[from_slot][1]])
            inputs.append({"name": name, "type": kind, "link": link_id})
        widgets_values: list[Any] = []
        for name, default, control in face.widgets:
            widgets_values.append(n.values.get(name, default))
            if control:
                widgets_values.append("fixed")
        size = _size(face, n)
        x = 40 + 400 * depths[n.id]
        y = column_y.get(depths[n.id], 40)
        column_y[depths[n.id]] = y + max(size[1], HEIGHT_AFTER_RUN.get(n.type, 0)) + 50
        ui_nodes.append({"id": n.id, "type": n.type, "pos": [x, y], "size": size, "flags": {}, "order": 0,
                         "mode": 0, "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": n.type},
                         "widgets_values": widgets_values})
    for index, node in enumerate(ui_nodes):
        node["order"] = index
        face = faces[node["id"]]
        node["outputs"] = [{"name": name, "type": kind, "slot_index": slot,
                            "links": [link[0] for link in links if link[1] == node["id"] and link[2] == slot]}
                           for slot, (name, kind) in enumerate(face.outputs)]
    ui_nodes.sort(key=lambda node: node["id"])
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hspace/{workflow.name}")), "revision": 0,
            "last_node_id": max(n.id for n in workflow.nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "hspace_id": workflow.name,
                      "hspace_title": workflow.title}, "version": 0.4}


# -- thumbnails --------------------------------------------------------------------------------------------------
THUMBNAIL_SIZE = (512, 512)  # the Templates browser shows square cards


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def thumbnail(graph: dict[str, Any], title: str, size: tuple[int, int] = THUMBNAIL_SIZE) -> Image.Image:
    """The card of a workflow: its title in large type over a diagram of the graph (boxes at the nodes'
    positions, links coloured by type)."""
    image = Image.new("RGB", size, "#202020")
    draw = ImageDraw.Draw(image)
    font = _font(30)
    lines = _wrap(draw, title, font, size[0] - 40)
    for i, line in enumerate(lines):
        draw.text((20, 18 + 38 * i), line, fill="#f0f0f0", font=font)
    top = 18 + 38 * len(lines) + 16
    nodes = {n["id"]: n for n in graph["nodes"]}
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    bottom = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    scale = min((size[0] - 20) / right, (size[1] - top - 10) / bottom)

    def box(n: dict[str, Any]) -> tuple[float, float, float, float]:
        x, y = n["pos"]
        w, h = n["size"]
        return 10 + x * scale, top + y * scale, 10 + (x + w) * scale, top + (y + h) * scale

    for _, src, src_slot, dst, dst_slot, kind in graph["links"]:
        a, b = box(nodes[src]), box(nodes[dst])
        draw.line([(a[2], a[1] + 6 + 4 * src_slot), (b[0], b[1] + 6 + 4 * dst_slot)],
                  fill=TYPE_COLOURS.get(kind, "#aaaaaa"), width=2)
    for n in nodes.values():
        ours = n["type"].startswith("HSpace")
        fill = "#5a5a2a" if n["type"] == NOTE else "#2f4f4f" if ours else "#353535"
        draw.rectangle(box(n), fill=fill, outline="#888888")
    return image


def readme() -> str:
    """The index of the examples: title, file and the text of each workflow's note."""
    lines = ["# Example workflows", "",
             "UI-format workflows (drag one onto ComfyUI, or open it from the Templates browser). They are "
             "written by `scripts/make_workflows.py` from the node declarations; edit that script, not the files.",
             ""]
    for workflow in WORKFLOWS:
        text = next((n.values["text"] for n in workflow.nodes if n.type == NOTE), "")
        stem = workflow.file_stem.replace(" ", "%20")
        lines += [f"## {workflow.title}", "", f"`{workflow.file_stem}.json`", "", f"![]({stem}.jpg)", "", text, ""]
    return "\n".join(lines)


def main() -> None:
    OUT_DIR.mkdir(exist_ok=True)
    for workflow in WORKFLOWS:
        graph = build(workflow)
        (OUT_DIR / f"{workflow.file_stem}.json").write_text(json.dumps(graph, indent=1) + "\n")
        thumbnail(graph, workflow.title).save(OUT_DIR / f"{workflow.file_stem}.jpg", quality=90)
        print(f"wrote {workflow.file_stem}.json and .jpg ({len(graph['nodes'])} nodes, {len(graph['links'])} links)")
    (OUT_DIR / "README.md").write_text(readme())
    if _v3.io is not None:
        V3_INFO.write_text(json.dumps(v3_info(), indent=1) + "\n")
        print(f"wrote {V3_INFO.name} from ComfyUI's V3 schemas")


if __name__ == "__main__":
    main()
