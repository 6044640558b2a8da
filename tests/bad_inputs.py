"""A catalogue of bad inputs through the library, the node classes and the command line.

Each case is ``(id, call, pattern)``: ``call()`` feeds one bad input, and a clear refusal is an
:class:`~hspace_core.errors.HSpaceError` whose one-line message matches ``pattern`` (it names the problem). Used by
``tests/test_bad_input.py`` and by ``scripts/bad_input_figures.py``, which counts clear, raw and silent outcomes.
Only tiny models and analytic inputs: every call returns (or refuses) in well under a second, before any long work.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from hspace_core import arithmetic
from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.direction import Direction, Trajectory
from hspace_core.discovery.attribute import attribute_direction, stratified_mean_difference
from hspace_core.discovery.pca import pca_directions
from hspace_core.errors import HSpaceError
from hspace_core.pipeline import HSpacePipeline
from hspace_core.samplers import sample_ddim
from hspace_core.schedule import VPSchedule
from nodes import pixel_latents, pixel_model
from hspace_core.direction import Inversion
from nodes.registry import NODE_CLASS_MAPPINGS
from tiny import tiny_cond_unet, tiny_unet

Case = tuple[str, Callable[[], object], str]


# -- shared objects, built once -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="hspace_bad_input_"))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.lru_cache(maxsize=None)
def pipe() -> HSpacePipeline:
    return HSpacePipeline(tiny_unet(channels=1, size=8), VPSchedule.linear())


def direction(timesteps: bool = False) -> Direction:
    shape = pipe().fingerprint["h_shape"]
    if timesteps:
        return Direction(torch.randn(2, *shape), [999.0, 0.0])
    return Direction(torch.randn(shape))


def x_T(batch: int = 2, channels: int = 1, size: int = 8) -> torch.Tensor:
    return torch.randn(batch, channels, size, size)


def sigmas(steps: int = 2) -> torch.Tensor:
    return pipe().sigmas(steps)


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, 8, 8) * 2 - 1


@functools.lru_cache(maxsize=None)
def model_folders() -> dict[str, Path]:
    """A good pixel-DDPM folder and its broken variants."""
    from diffusers import DiTTransformer2DModel, UNet2DModel

    root = workdir() / "models"
    good = root / "good"
    tiny_unet(channels=1).save_pretrained(good / "unet")
    (good / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "linear", "num_train_timesteps": 1000}))
    folders = {"good": good}

    def variant(name: str) -> Path:
        folders[name] = root / name
        shutil.copytree(good, folders[name])
        return folders[name]

    (variant("bad_json") / "unet" / "config.json").write_text("{not json")
    (variant("json_list") / "unet" / "config.json").write_text("[1, 2]")
    (variant("no_weights") / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    weights = variant("truncated") / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (variant("bad_scheduler") / "scheduler_config.json").write_text("beta_schedule: linear")
    (variant("scheduler_types") / "scheduler_config.json").write_text(json.dumps({"beta_start": "0.0001"}))
    config = variant("other_weights") / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "block_out_channels": [8, 24]}))
    folders["dit"] = root / "dit"
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, num_layers=1, sample_size=8,
                          patch_size=2, num_embeds_ada_norm=10).save_pretrained(folders["dit"] / "unet")
    folders["conditional"] = root / "conditional"
    tiny_cond_unet().save_pretrained(folders["conditional"] / "unet")
    folders["class_conditional"] = root / "class_conditional"
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=4, num_class_embeds=10).save_pretrained(folders["class_conditional"] / "unet")
    for name in ("dit", "conditional", "class_conditional"):
        shutil.copy(good / "scheduler_config.json", folders[name])
    return folders


def from_pretrained(name: str) -> HSpacePipeline:
    return HSpacePipeline.from_pretrained(model_folders()[name])


def node_load(name: str):
    return pixel_model.load_unet_and_schedule(str(model_folders()[name]))


def node(name: str):
    return NODE_CLASS_MAPPINGS[name]()


class FakeSampling:
    sigmas = torch.arange(1, 1001, dtype=torch.float32) / 100

    def timestep(self, sigma):
        return (torch.as_tensor(sigma) * 100).round()

    def sigma(self, timestep):
        return torch.as_tensor(timestep, dtype=torch.float32) / 100

    def percent_to_sigma(self, percent: float) -> float:
        return 10.0 * (1.0 - percent)


class FakePatcher:
    """What the node code reads of ComfyUI's ModelPatcher, over a UNet with a middle block of h shape [4, 2, 2]."""

    def __init__(self) -> None:
        self.model = type("BaseModel", (), {})()
        self.model.diffusion_model = torch.nn.Module()
        self.model.diffusion_model.middle_block = torch.nn.Conv2d(4, 4, 1)
        self.model.model_sampling = FakeSampling()

    def clone(self) -> "FakePatcher":
        return self

    def set_model_middle_block_after_patch(self, fn) -> None:
        pass

    def get_model_object(self, name: str):
        return getattr(self.model, name)


def node_direction() -> list[Direction]:
    return [Direction(torch.randn(4, 2, 2))]


def trajectory(n: int = 4) -> Trajectory:
    return Trajectory(torch.randn(n, 2, 4, 2, 2), [800.0, 300.0], [2.0, 0.4])


def noise_record() -> Inversion:
    return Inversion(torch.zeros(1, 1, 8, 8), torch.tensor([2.0, 1.0, 0.0]), None, 0.0, method="ddim")


# -- the command line ---------------------------------------------------------------------------------------

def cli(*argv: str, out: str | None = "report") -> None:
    """Run ``hspace demo``; a refusal (exit 2, one 'hspace: error:' line, no report folder made) becomes an
    HSpaceError with that line, anything else is left as it is."""
    from hspace_core.cli import main

    folder = workdir() / "cli" / out if out else None
    args = ["demo", *argv] + (["--out", str(folder)] if folder else [])
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            main(args)
    except SystemExit as exit_info:
        lines = stderr.getvalue().strip().splitlines()
        if exit_info.code == 2 and len(lines) == 1 and lines[0].startswith("hspace: error:"):
            if folder is not None and folder.exists():
                raise AssertionError(f"the refused run left {folder} behind") from None
            raise HSpaceError(lines[0]) from None
        raise


def existing_file() -> Path:
    path = workdir() / "cli" / "a_file"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")
    return path


# -- the cases ----------------------------------------------------------------------------------------------

def _dir(delta, timesteps=None) -> Direction:
    return Direction(delta, timesteps)


def _opposite_slerp():
    a = direction()
    return arithmetic.slerp(a, arithmetic.scale(a, -2.0), 0.5)


def _normalize_self_projection(factor: float):
    a = direction(timesteps=True)
    return arithmetic.normalize(arithmetic.project_out(a, [arithmetic.scale(a, factor)]))


def _normalize_gram_schmidt():
    a = direction()
    return arithmetic.normalize(arithmetic.orthogonalize([a, arithmetic.scale(a, 3.0)])[1])


LIBRARY: list[Case] = [
    # model folders
    ("folder: config is not JSON", lambda: from_pretrained("bad_json"), "not valid JSON"),
    ("folder: config is a JSON list", lambda: from_pretrained("json_list"), "JSON object expected"),
    ("folder: a DiT taken for a UNet", lambda: from_pretrained("dit"), "DiTTransformer2DModel.*UNet2DModel"),
    ("folder: SD conditional UNet as pixel DDPM", lambda: from_pretrained("conditional"), "text-conditional"),
    ("folder: class-conditional UNet", lambda: from_pretrained("class_conditional"), "class-conditional"),
    ("folder: config without weights", lambda: from_pretrained("no_weights"), "no weights"),
    ("folder: truncated weights", lambda: from_pretrained("truncated"), "truncated"),
    ("folder: weights of another config", lambda: from_pretrained("other_weights"), "do not fit|could not be loaded"),
    ("folder: scheduler config not JSON", lambda: from_pretrained("bad_scheduler"), "scheduler config.*not valid JSON"),
    ("folder: scheduler beta_start a string", lambda: from_pretrained("scheduler_types"), "beta_start"),
    ("folder: no such folder", lambda: HSpacePipeline.from_pretrained(workdir() / "missing"), "no diffusers UNet"),
    ("schedule: num_train_timesteps a string", lambda: VPSchedule.from_diffusers_config({"num_train_timesteps": "1k"}),
     "num_train_timesteps"),
    # images and latents
    ("invert: 3 channels for a 1-channel model", lambda: pipe().invert(torch.zeros(2, 3, 8, 8), 2), "1 channels"),
    ("invert: wrong size", lambda: pipe().invert(torch.zeros(2, 1, 16, 16), 2), "8x8 pixels"),
    ("invert: missing batch axis", lambda: pipe().invert(torch.zeros(1, 8, 8), 2), "no batch axis"),
    ("invert: empty batch", lambda: pipe().invert(torch.zeros(0, 1, 8, 8), 2), "empty batch"),
    ("invert: pixels in [0, 255]", lambda: pipe().invert(torch.rand(2, 1, 8, 8) * 255, 2), r"\[-1, 1\].*255"),
    ("invert: uint8 pixels", lambda: pipe().invert(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 2), "floating-point"),
    ("invert: NaN pixels", lambda: pipe().invert(torch.full((2, 1, 8, 8), float("nan")), 2), "NaN"),
    ("invert: an SD latent", lambda: pipe().invert(torch.zeros(1, 4, 8, 8), 2), "Stable Diffusion latent"),
    ("invert: unknown method", lambda: pipe().invert(images(), 2, method="exact"), "method must be"),
    ("edit: an SD latent as x_T", lambda: pipe().edit(torch.randn(1, 4, 8, 8), sigmas()), "Stable Diffusion latent"),
    ("edit: x_T without batch axis", lambda: pipe().edit(torch.randn(1, 8, 8), sigmas()), "no batch axis"),
    ("edit: empty x_T", lambda: pipe().edit(torch.randn(0, 1, 8, 8), sigmas()), "empty batch"),
    ("edit: x_T of another size", lambda: pipe().edit(torch.randn(1, 1, 4, 4), sigmas()), "8x8 pixels"),
    ("edit: Inf in x_T", lambda: pipe().edit(torch.full((1, 1, 8, 8), float("inf")), sigmas()), "NaN or Inf"),
    ("edit: x_T not a tensor", lambda: pipe().edit([[0.0]], sigmas()), "tensor"),
    # parameters
    ("edit: eta above 1", lambda: pipe().edit(x_T(), sigmas(), eta=1.5), r"eta.*\[0.0, 1.0\]"),
    ("edit: negative eta", lambda: pipe().edit(x_T(), sigmas(), eta=-0.1), r"eta.*\[0.0, 1.0\]"),
    ("edit: NaN eta", lambda: pipe().edit(x_T(), sigmas(), eta=float("nan")), "eta.*finite"),
    ("edit: NaN strength", lambda: pipe().edit(x_T(), sigmas(), [(direction(), float("nan"))]), "strength.*finite"),
    ("edit: infinite strength", lambda: pipe().edit(x_T(), sigmas(), [(direction(), float("inf"))]),
     "strength.*finite"),
    ("edit: string strength", lambda: EditSpec(direction(), "2"), "strength.*number"),
    ("edit: negative sample index", lambda: pipe().edit(x_T(), sigmas(), [EditSpec(direction(), 1.0, [-1])]),
     "indices >= 0"),
    ("edit: fractional sample index", lambda: EditSpec(direction(), 1.0, [0.5]), "sample indices"),
    ("edit: a tensor instead of a Direction", lambda: pipe().edit(x_T(), sigmas(), [(torch.zeros(3), 1.0)]),
     "Direction expected"),
    ("edit: t_edit beyond the model's timesteps", lambda: pipe().edit(x_T(), sigmas(), [(direction(), 1.0)],
                                                                     t_edit=5000), "t_edit.*999"),
    ("edit: negative t_edit", lambda: pipe().edit(x_T(), sigmas(), [(direction(), 1.0)], t_edit=-1), "t_edit"),
    ("edit: unknown mode", lambda: pipe().edit(x_T(), sigmas(), mode="fast"), "mode must be"),
    ("edit: noises of the wrong count", lambda: pipe().edit(x_T(), sigmas(3), eta=1.0, noises=[torch.zeros(2, 1, 8, 8)]),
     "noise term.*per step"),
    ("edit: noises of the wrong shape", lambda: pipe().edit(x_T(), sigmas(2), eta=1.0,
                                                          noises=[torch.zeros(1, 1, 8, 8)] * 2), "noise term"),
    ("capture: steps 0", lambda: pipe().capture([0], steps=0), "steps"),
    ("capture: steps 1", lambda: pipe().capture([0], steps=1), "2 to 1000 steps"),
    ("capture: fractional steps", lambda: pipe().capture([0], steps=2.5), "steps.*integer"),
    ("capture: batch_size 0", lambda: pipe().capture([0, 1], steps=2, batch_size=0), "batch_size"),
    ("capture: no seeds", lambda: pipe().capture([], steps=2), "seed"),
    ("noise: no seeds", lambda: pipe().noise([], sigmas()), "seed"),
    ("noise: a seed that is not an integer", lambda: pipe().noise([0, "one"], sigmas()), "seed.*integer"),
    ("sigmas: unknown grid", lambda: pipe().sigmas(4, grid="karras"), "grid must be"),
    ("sampler: eta 2", lambda: sample_ddim(
        lambda x, s, **k: x * 0, x_T(), sigmas(), eta=2.0, disable=True), r"eta.*\[0.0, 1.0\]"),
    ("direction: NaN timestep", lambda: _dir(torch.randn(2, 4, 2, 2), [999.0, float("nan")]), "finite timesteps"),
    ("direction: duplicate timesteps", lambda: _dir(torch.randn(2, 4, 2, 2), [500.0, 500.0]), "distinct timesteps"),
    ("direction: empty tensor", lambda: _dir(torch.zeros(0, 2, 2)), "non-empty"),
    ("direction: complex tensor", lambda: _dir(torch.zeros(4, 2, 2, dtype=torch.complex64)), "real-valued"),
    ("direction: Inf values", lambda: _dir(torch.full((4, 2, 2), float("inf"))), "NaN or Inf"),
    ("direction: 2-D tensor", lambda: _dir(torch.zeros(4, 2)), r"\[C,H,W\]"),
    ("direction: slices without timesteps", lambda: _dir(torch.zeros(2, 4, 2, 2)), "one timestep per slice"),
    ("pca: zero components", lambda: pca_directions(
        trajectory(), 0), "at least one component"),
    ("pca: unknown method", lambda: pca_directions(
        trajectory(), 2, method="magic"), "method must be"),
    ("pca: one sample", lambda: pca_directions(
        trajectory(1), 2), "at least 2 samples"),
    ("bottleneck: NaN edit window", lambda: Bottleneck([EditSpec(direction())], window=(float("nan"), 900.0)),
     "window.*finite"),
    # degenerate arithmetic
    ("arithmetic: slerp of opposite directions", _opposite_slerp, "opposite directions"),
    ("arithmetic: normalize a self-projection", lambda: _normalize_self_projection(1.0), "zero direction"),
    ("arithmetic: normalize a projection out of 3x itself", lambda: _normalize_self_projection(3.0), "zero direction"),
    ("arithmetic: normalize a Gram-Schmidt remainder", _normalize_gram_schmidt, "zero direction"),
    ("arithmetic: NaN scale factor", lambda: arithmetic.scale(direction(), float("nan")), "scale factor.*finite"),
    ("arithmetic: NaN slerp position", lambda: arithmetic.slerp(direction(), direction(), float("nan")),
     "slerp position.*finite"),
    ("arithmetic: cosine with a zero direction", lambda: arithmetic.cosine(direction(), _dir(torch.zeros(
        pipe().fingerprint["h_shape"]))), "zero direction"),
    ("arithmetic: add different h shapes", lambda: arithmetic.add(direction(), _dir(torch.zeros(1, 1, 1))),
     "different h shapes"),
    ("attribute direction: scores of another length", lambda: attribute_direction(
        torch.randn(10, 2, 1, 1), torch.randn(9)), "one score per sample.*10 samples, 9 scores"),
    ("attribute direction: NaN group labels", lambda: stratified_mean_difference(
        torch.randn(10, 2, 1, 1), torch.randn(10), torch.full((10,), float("nan"))), "group labels.*NaN"),
]

NODES: list[Case] = [
    ("node folder: config is not JSON", lambda: node_load("bad_json"), "not valid JSON"),
    ("node folder: a DiT", lambda: node_load("dit"), "DiTTransformer2DModel"),
    ("node folder: SD conditional UNet", lambda: node_load("conditional"), "text-conditional"),
    ("node folder: config without weights", lambda: node_load("no_weights"), "no weights"),
    ("node folder: truncated weights", lambda: node_load("truncated"), "truncated"),
    ("node folder: scheduler config not JSON", lambda: node_load("bad_scheduler"), "not valid JSON"),
    ("node image: pixels in [0, 255]", lambda: pixel_latents.image_to_latent(
        torch.rand(1, 8, 8, 3) * 255, 1), r"\[0, 1\]"),
    ("node image: empty batch", lambda: pixel_latents.image_to_latent(
        torch.rand(0, 8, 8, 3), 1), "empty batch"),
    ("node model: an SD latent into the pixel model", lambda: pixel_model
     .DiffusersUNetWrapper(tiny_unet(channels=1)).forward(torch.zeros(1, 4, 8, 8), torch.tensor([10.0])),
     "1 channels.*got 4"),
    ("node supervised: unknown method", lambda: node("HSpaceSupervisedDirection").discover(
        trajectory(), trajectory(), "lda"), "method.*mean_difference"),
    ("node capture: unknown store", lambda: node("HSpaceCaptureH").capture(
        FakePatcher(), torch.tensor([1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 2, 0, 1.0, 0.0, "cloud", "x"),
     "store.*memory"),
    ("node capture: zero samples", lambda: node("HSpaceCaptureH").capture(
        FakePatcher(), torch.tensor([1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 0, 1.0, 0.0, "memory", "x"),
     "num_samples"),
    ("node capture: eta 3", lambda: node("HSpaceCaptureH").capture(
        FakePatcher(), torch.tensor([1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 2, 0, 1.0, 3.0, "memory", "x"),
     "eta"),
    ("node invert: unknown method", lambda: node("HSpaceInvertImage").execute(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, "exact", 1.0, 0),
     "method.*ddim"),
    ("node invert: eta -1", lambda: node("HSpaceInvertImage").execute(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)},
        {"method": "edit_friendly", "eta": -1.0}, 1.0, 0), "eta"),
    ("node invert: a mode value that is no choice", lambda: node("HSpaceInvertImage").execute(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, {"eta": 1.0}, 1.0, 0),
     "method must be one of"),
    ("node sample from noise: unknown mode", lambda: node("HSpaceSampleFromNoise").execute(
        FakePatcher(), noise_record(), "fast", 1.0, 0), "mode.*asymmetric"),
    ("node join: one direction", lambda: node("HSpaceJoinDirections").execute({"direction0": node_direction()}),
     "at least 2"),
    ("node asyrp sampler: unknown mode", lambda: node("HSpaceAsyrpSampler").make(
        FakePatcher(), "fast", 400, 0, 0.0, 1.0, 0), "mode.*asymmetric"),
    ("node asyrp sampler: eta 1.5", lambda: node("HSpaceAsyrpSampler").make(
        FakePatcher(), "asymmetric", 400, 0, 1.5, 1.0, 0), "eta"),
    ("node asyrp sampler: t_edit beyond the model", lambda: node("HSpaceAsyrpSampler").make(
        FakePatcher(), "asymmetric", 5000, 0, 0.0, 1.0, 0), "t_edit.*999"),
    ("node pick: negative index", lambda: node("HSpacePickDirection").pick(node_direction() * 2, -1), "index.*>= 0"),
    ("node pick: index past the set", lambda: node("HSpacePickDirection").pick(node_direction(), 3), "out of range"),
    ("node sweep: one column", lambda: node("HSpaceStrengthSweep").sweep(
        FakePatcher(), node_direction(), torch.tensor([2.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 1.0,
        -1.0, 1.0, 1, "percent", 0.0, 1.0, "cond", False), "count.*>= 2"),
    ("node sweep: NaN strength", lambda: node("HSpaceStrengthSweep").sweep(
        FakePatcher(), node_direction(), torch.tensor([2.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 1.0,
        float("nan"), 1.0, 3, "percent", 0.0, 1.0, "cond", False), "strength_min.*finite"),
    ("node apply: NaN strength", lambda: node("HSpaceApplyDirection").apply(
        FakePatcher(), node_direction(), float("nan"), "percent", 0.0, 1.0, "cond", False), "strength.*finite"),
    ("node apply: unknown rows", lambda: node("HSpaceApplyDirection").apply(
        FakePatcher(), node_direction(), 1.0, "percent", 0.0, 1.0, "all", False), "rows must be"),
    ("node jacobian: unknown method", lambda: node("HSpaceJacobianDirections").discover(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 3, 0, "lanczos", 50),
     "method.*subspace"),
    ("node jacobian: negative step_index", lambda: node("HSpaceJacobianDirections").discover(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 3, -1, "subspace", 50),
     "step_index"),
    ("node jacobian: step_index past the schedule", lambda: node("HSpaceJacobianDirections").discover(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 3, 7, "subspace", 50),
     "step_index.*2 steps"),
    ("node pullback: unknown sign", lambda: node("HSpacePullbackEdit").edit(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 800, 3, 0, "up", 0.1,
        16, 0, 50), r"sign.*\+"),
    ("node pullback: t_edit beyond the model", lambda: node("HSpacePullbackEdit").edit(
        FakePatcher(), torch.tensor([2.0, 1.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)}, 0, 4000, 3, 0, "+", 0.1,
        16, 0, 50), "t_edit"),
    ("node embedded digits: unknown digit", lambda: node("HSpaceEmbeddedDigits").load("12", 4, 0), "digit"),
    ("node embedded digits: zero count", lambda: node("HSpaceEmbeddedDigits").load("3", 0, 0), "count"),
    ("node embedded digits: negative offset", lambda: node("HSpaceEmbeddedDigits").load("3", 4, -2), "offset"),
    ("node digit classifier: unknown digit", lambda: node("HSpaceDigitClassifierDirection").discover(
        trajectory(), {"samples": torch.zeros(4, 1, 16, 16)}, "x", 1), "digit"),
    ("node scale: NaN factor", lambda: node("HSpaceScaleDirection").scale(node_direction(), float("nan")),
     "scale factor"),
    ("node slerp: opposite directions", lambda: (lambda d: node("HSpaceSlerpDirections").slerp(
        d, [arithmetic.scale(d[0], -1.0)], 0.5))(node_direction()), "opposite"),
    ("node normalize: after projecting out itself", lambda: (lambda d: node("HSpaceNormalizeDirection").normalize(
        node("HSpaceProjectOutDirections").project_out(d, d)[0], False))(node_direction()), "zero direction"),
    ("node direction set: empty", lambda: node("HSpaceDirectionInfo").info([]), "empty direction set"),
    ("node evaluate: unknown attribute", lambda: node("HSpaceEvaluateDirection").evaluate(
        node_direction(), "size", 8, 0, 2, 1, False), "target"),
    ("node evaluate: one sample", lambda: node("HSpaceEvaluateDirection").evaluate(
        node_direction(), "slant", 1, 0, 2, 1, False), "samples"),
]

CLI: list[Case] = [
    ("cli: --out names an existing file", lambda: cli("--out", str(existing_file()), out=None), "--out.*existing file"),
    ("cli: --out under a file", lambda: cli("--out", str(existing_file() / "report"), out=None), "--out.*is a file"),
    ("cli: --steps 0", lambda: cli("--steps", "0"), "--steps"),
    ("cli: --steps 1", lambda: cli("--steps", "1"), "--steps"),
    ("cli: --steps 5000", lambda: cli("--steps", "5000", "--samples", "8"), "--steps"),
    ("cli: --samples 1", lambda: cli("--samples", "1"), "--samples"),
    ("cli: --samples 4", lambda: cli("--samples", "4"), "--samples"),
    ("cli: --real-digits above what exists", lambda: cli("--real-digits", "501"), "--real-digits.*500"),
    ("cli: --real-digits 5", lambda: cli("--real-digits", "5"), "--real-digits"),
    ("cli: --model no such folder", lambda: cli("--model", str(workdir() / "nothing")), "--model"),
    ("cli: --model names a file", lambda: cli("--model", str(existing_file())), "--model.*a file"),
    ("cli: --model a DiT folder", lambda: cli("--model", str(model_folders()["dit"])), "--model.*DiT"),
    ("cli: --model truncated weights", lambda: cli("--model", str(model_folders()["truncated"])), "--model.*truncated"),
]

CASES: list[Case] = LIBRARY + NODES + CLI


class StartedWork(BaseException):
    """Raised (by a timer of the caller) when a bad input was accepted and long work began."""


def outcome(call: Callable[[], object], pattern: str) -> tuple[str, str]:
    """("clear" | "unclear" | "raw" | "silent", what happened): unclear = HSpaceError not naming the problem."""

    try:
        call()
    except HSpaceError as err:
        message = str(err)
        named = re.search(pattern, message) is not None and "\n" not in message
        return ("clear" if named else "unclear"), message
    except StartedWork:
        return "silent", "accepted: long work started"
    except BaseException as err:  # noqa: BLE001 - counting what escapes is the point
        return "raw", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return "silent", "accepted"
