"""The main job, ``hspace demo``: find h-space directions on a real diffusion model and edit with them.

On the embedded MNIST model (default) it runs, in a few minutes on 2 CPU cores:
capture h over generated samples -> PCA directions (spectrum, strength sweeps, class-change rate vs a
random direction) -> an attribute direction measured from pixels (ink) -> a digit attribute (slant) edited by
the raw and the disentangled supervised direction and by the class-keeping edit, measured on held-out seeds -> DDIM inversion of real
held-out digits (reconstruction error; exact edit-friendly inversion) -> class-to-class directions from
their h (per-timestep mean differences) -> Asyrp edits of the real digits (target-class hit rate vs a
random direction of the same per-step norm). Everything lands in a report folder.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .arithmetic import random_like
from .bottleneck import EditSpec
from .checks import check_number
from .direction import Direction
from .experiments import (balanced_subset, change_rate, class_direction, class_means, class_transfer_groups, cyclic_targets,
                          edit_groups, hit_rate)
from .discovery.pca import pca_directions
from .discovery.attribute import attribute_direction
from .discovery.supervised import disentangle, mean_difference, supervised_direction, top_bottom_k
from .evaluation import ATTRIBUTES, class_keeping_direction, evaluate_direction
from .errors import HSpaceError
from .fileio import save_direction
from .imaging import image_grid
from .pipeline import HSpacePipeline, is_embedded
from .report import bar_chart
from .schedule import window_sigmas

# The sweeps show the top 4 principal components, and PCA of n samples has at most n - 1.
MIN_SAMPLES = 5
# The disentangled-attribute experiment: its attribute, and the held-out seeds it is measured on.
DEMO_ATTRIBUTE = "slant"
HELD_OUT_SEED = 100000
CALIBRATION_OFFSET = 100000  # the class-keeping edit is scaled on seeds HELD_OUT_SEED + this..
DEMO_EVAL_SAMPLES = 24
DISENTANGLE_MIN_SAMPLES = 64  # classes of ~6 samples (4 per group at least) and 17 noise statistics


@dataclass
class DemoConfig:
    samples: int = 256
    steps: int = 20
    out: Path = Path("hspace_report")
    model: str | Path | None = None  # None or "unet", "dit" (embedded), or a folder
    seed: int = 0
    components: int = 8
    t_edit_pc: int = 400
    real_digits: int = 500
    batch_size: int = 128


@dataclass
class Report:
    config: dict
    numbers: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def timed(self, name: str, start: float) -> None:
        self.seconds[name] = round(time.perf_counter() - start, 2)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_out_folder(out: Path) -> None:
    """Refuse an --out that is a file or lies under one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HSpaceError(f"--out: a folder for the report expected, but {out} is an existing file")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise HSpaceError(f"--out: {out} cannot be created: {blocking} is a file, not a folder")


def check_config(config: DemoConfig) -> None:
    """Refuse bad settings before any work, naming the command-line flag of each."""
    check_number(config.samples, _flag("samples"), MIN_SAMPLES, integer=True)
    check_number(config.steps, _flag("steps"), 2, integer=True)
    check_number(config.real_digits, _flag("real_digits"), 10, integer=True)  # class means need every digit
    check_number(config.seed, _flag("seed"), integer=True)
    for name in ("components", "batch_size"):
        check_number(getattr(config, name), name, 1, integer=True)
    check_out_folder(config.out)
    if not is_embedded(config.model) and not Path(config.model).is_dir():
        what = "a file" if Path(config.model).exists() else "no such folder"
        raise HSpaceError(f"--model: unet, dit or a diffusers pixel-DDPM folder expected, got {config.model} ({what})")


def _load(config: DemoConfig) -> tuple[HSpacePipeline, torch.Tensor]:
    """The model and the generation sigmas, with the settings that depend on the model checked."""
    try:
        pipe = HSpacePipeline.load(config.model)
    except HSpaceError as err:
        raise HSpaceError(f"--model {config.model or '(embedded)'}: {err}") from None
    try:
        sigmas = pipe.sigmas(config.steps)
    except HSpaceError as err:
        raise HSpaceError(f"--steps {config.steps}: {err}") from None
    window_sigmas(pipe.schedule, sigmas, config.t_edit_pc)
    if is_embedded(config.model):
        from .embedded import load_heldout_digits

        available = len(load_heldout_digits()[1])
        check_number(config.real_digits, f"--real-digits (the embedded model holds out {available})", 10, available,
                     integer=True)
    return pipe, sigmas


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> Report:
    """Check the settings and load the model, then run; a failed or interrupted run leaves no report folder it made."""
    check_config(config)
    pipe, sigmas = _load(config)
    out = Path(config.out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HSpaceError(f"--out: the report folder {out} cannot be created ({err.strerror})") from None
    try:
        return _run(config, pipe, sigmas, out, log)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run(config: DemoConfig, pipe: HSpacePipeline, sigmas: torch.Tensor, out: Path,
         log: Callable[[str], None]) -> Report:
    report = Report({k: str(v) for k, v in asdict(config).items()})
    embedded = is_embedded(config.model)
    evaluator = None
    if embedded:
        from .embedded import load_evaluator

        evaluator = load_evaluator()

    start = time.perf_counter()
    seeds = list(range(config.seed, config.seed + config.samples))
    with tqdm(total=len(seeds), desc="capture h", unit="sample") as bar:
        trajectory, images = pipe.capture(seeds, config.steps, config.batch_size,
                                          progress=lambda done, total: bar.update(done - bar.n))
    report.timed("capture", start)
    image_grid(images[:64], ncols=16, upscale=3).save(out / "samples.png")
    x_T = pipe.noise(seeds, sigmas)

    start = time.perf_counter()
    pca = pca_directions(trajectory, num_components=config.components)
    ratios = pca.explained_variance_ratio[0].tolist()
    bar_chart(ratios, f"PCA of h at t={int(trajectory.timesteps[0])}: explained variance ratio").save(
        out / "pca_spectrum.png")
    report.numbers["pca_explained_variance_ratio_first_step"] = [round(r, 4) for r in ratios]
    pcs = [pca.to_direction(k, trajectory.timesteps, meta={"fingerprint": pipe.fingerprint}) for k in range(4)]
    for k, d in enumerate(pcs[:2]):
        save_direction(d, out / f"pc{k}.safetensors")
    strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
    for k, d in enumerate(pcs):
        rows = [pipe.edit(x_T[:6], sigmas, [(d, s)], t_edit=config.t_edit_pc) for s in strengths]
        grid = torch.stack(rows, dim=1).flatten(0, 1)
        image_grid(grid, ncols=len(strengths), upscale=4, col_labels=[f"{s:+.0f} sd" for s in strengths]).save(
            out / f"pc{k}_sweep.png")
    report.timed("pca", start)
    log(f"PCA: top-{config.components} explained variance at t=T: {[round(r, 3) for r in ratios]}")

    start = time.perf_counter()
    _ink_experiment(pipe, config, report, trajectory, images, x_T, sigmas, seeds, out, log)
    report.timed("ink direction", start)

    if embedded:
        start = time.perf_counter()
        _disentangled_experiment(pipe, evaluator, config, report, trajectory, images, x_T, sigmas, out, log)
        report.timed("disentangled attribute", start)
        _digit_experiments(pipe, evaluator, config, report, images, x_T, sigmas, pcs[0], out, log)

    (out / "summary.json").write_text(json.dumps(asdict(report), indent=2))
    (out / "summary.md").write_text(_summary_markdown(report))
    log(f"report written to {out}/ (summary.md, *.png, *.safetensors)")
    return report


def _ink_experiment(pipe, config, report, trajectory, images, x_T, sigmas, seeds, out, log) -> None:
    """An attribute measured from pixels (ink = mean pixel value): top-K minus bottom-K mean h (Haas et al.).

    For generated samples ink is largely set by the brightness of the starting noise, so the raw mean
    difference is mostly a "bright x_t" direction, to which the decoder answers with a larger eps: it lowers
    ink. Projecting out the same kind of direction scored by the noise's brightness (joint projection,
    Haas et al.'s disentangling) leaves a direction that adds ink.
    """
    k = max(1, len(seeds) // 8)
    keys = trajectory.timesteps.tolist()

    def scored_direction(scores: torch.Tensor) -> torch.Tensor:
        positive, negative = top_bottom_k(scores, k)
        return mean_difference(trajectory.h[positive], trajectory.h[negative])

    raw = scored_direction(images.mean(dim=(1, 2, 3)))
    noise_brightness = scored_direction(x_T.mean(dim=(1, 2, 3)).cpu())
    meta = {"method": "supervised", "attribute": "ink (mean pixel value)", "fingerprint": pipe.fingerprint}
    ink = Direction(disentangle(raw, [noise_brightness]), keys, {**meta, "disentangled_from": "noise brightness"})
    save_direction(ink, out / "ink.safetensors")
    count = min(64, len(seeds))
    plain = images[:count].mean(dim=(1, 2, 3))

    def ink_change(direction: Direction, strength: float) -> float:
        return float((pipe.edit(x_T[:count], sigmas, [(direction, strength)]).mean(dim=(1, 2, 3)) - plain).mean())

    numbers = report.numbers
    numbers["ink_raw_vs_noise_brightness_cosine"] = round(float(torch.nn.functional.cosine_similarity(
        raw.flatten().double(), noise_brightness.flatten().double(), dim=0)), 3)
    numbers["ink_change_raw_direction_x2"] = round(ink_change(Direction(raw, keys, meta), 2.0), 4)
    numbers["ink_change_disentangled_x2"] = round(ink_change(ink, 2.0), 4)
    numbers["ink_change_random_x2"] = round(abs(ink_change(random_like(ink, 1), 2.0)), 4)
    strengths = (-4.0, -2.0, 0.0, 2.0, 4.0)
    rows = [pipe.edit(x_T[:6], sigmas, [(ink, s)]) for s in strengths]
    image_grid(torch.stack(rows, 1).flatten(0, 1), ncols=len(strengths), upscale=4,
               col_labels=[f"{s:+.0f}" for s in strengths]).save(out / "ink_sweep.png")
    log(f"ink: the raw top-K minus bottom-K direction has cosine {numbers['ink_raw_vs_noise_brightness_cosine']:.2f}"
        f" with noise brightness and changes ink by {numbers['ink_change_raw_direction_x2']:+.3f} at x2; "
        f"disentangled: {numbers['ink_change_disentangled_x2']:+.3f} (random direction of the same norm: "
        f"|{numbers['ink_change_random_x2']:.3f}|)")


def _disentangled_experiment(pipe, evaluator, config, report, trajectory, images, x_T, sigmas, out, log) -> None:
    """A digit attribute (slant) edited by Haas's raw top-K minus bottom-K direction, by the disentangled one
    (scores freed of what x_T predicts, top minus bottom within each class, per std) and by the disentangled one
    with the class-keeping correction (scaled on other seeds to move slant as far as the plain edit), all measured on held-out seeds
    (evaluate_direction): intended share, effect, x random, class kept, other attributes, linearity."""
    target = DEMO_ATTRIBUTE
    if len(images) < DISENTANGLE_MIN_SAMPLES:
        log(f"{target}: the disentangled-direction experiment needs --samples {DISENTANGLE_MIN_SAMPLES} or more; skipped")
        return
    scores = ATTRIBUTES[target](images)
    keys = trajectory.timesteps.tolist()
    meta = {"method": "supervised", "attribute": target, "fingerprint": pipe.fingerprint}
    labels = evaluator.predict(images)[0]
    directions = {
        "raw": Direction(supervised_direction(trajectory.h, scores, max(1, len(scores) // 8)), keys, meta),
        "disentangled": Direction(attribute_direction(trajectory.h, scores, groups=labels, x_T=x_T,
                                                              min_group=4), keys,
                                  {**meta, "disentangled_from": "x_T statistics, class"})}
    save_direction(directions["disentangled"], out / f"{target}_disentangled.safetensors")
    first = config.seed + HELD_OUT_SEED
    held_out = pipe.noise(range(first, first + DEMO_EVAL_SAMPLES), sigmas)
    calibration = pipe.noise(range(first + CALIBRATION_OFFSET, first + CALIBRATION_OFFSET + DEMO_EVAL_SAMPLES), sigmas)
    # the class-keeping edit moves slant less per unit strength: scaled to move it as far as the plain edit
    directions["class_keeping"] = class_keeping_direction(pipe, directions["disentangled"], calibration, sigmas,
                                                          target, evaluator)
    strengths = (-2.0, -1.0, 0.0, 1.0, 2.0)
    rows = []
    for name, direction in directions.items():
        keep = name == "class_keeping"
        result = evaluate_direction(pipe, direction, held_out, sigmas, target, classifier=evaluator,
                                    strengths=(-1.0, 1.0, 2.0), random_directions=1, keep_class=keep)
        one = result.strengths[1]
        report.numbers[f"{target}_{name}"] = {
            "intended_share_at_+-1": round(min(result.at(-1.0).intended_share, one.intended_share), 3),
            "effect_at_+1": round(one.effect, 2),
            "x_random_at_+1": round(one.ratio_to_random, 2), "class_kept_at_+1": round(one.class_kept, 3),
            "worst_other_over_target_at_+1": round(one.worst_other_over_effect, 2),
            "linearity_x2_over_x1": round(result.linearity, 2)}
        result.chart().save(out / f"{target}_{name}_evaluation.png")
        log(f"{target}, {name} direction on {DEMO_EVAL_SAMPLES} held-out seeds: {report.numbers[f'{target}_{name}']}")
        # rows 4i..4i+3: the first 4 held-out samples at the i-th strength
        sweep = [EditSpec(direction, s, torch.arange(4 * i, 4 * (i + 1))) for i, s in enumerate(strengths)]
        rows.append(pipe.edit(held_out[:4].repeat(len(strengths), 1, 1, 1), sigmas, sweep,
                              keep_class=evaluator if keep else None))
    grid = torch.stack(rows).view(len(rows), len(strengths), 4, *held_out.shape[1:])
    image_grid(grid.permute(0, 2, 1, 3, 4, 5).flatten(0, 2), ncols=len(strengths), upscale=4,
               col_labels=[f"{s:+.0f}" for s in strengths],
               row_labels=["raw"] * 4 + ["disent."] * 4 + ["keep cl."] * 4).save(
        out / f"{target}_raw_vs_disentangled.png")


def _digit_experiments(pipe, evaluator, config, report, images, x_T, sigmas, pc0, out, log) -> None:
    from .embedded import load_heldout_digits

    start = time.perf_counter()
    labels_plain, confidence = evaluator.predict(images)
    report.numbers["samples_confident_fraction"] = round(float((confidence > 0.9).float().mean()), 3)
    for name, direction in (("pc0", pc0), ("random", random_like(pc0, 7))):
        edited = pipe.edit(x_T, sigmas, [(direction, 1.0)], t_edit=config.t_edit_pc, progress=True)
        report.numbers[f"{name}_class_change_rate"] = round(change_rate(evaluator, edited, labels_plain), 3)
    report.timed("PC class changes", start)
    log(f"top PC at +1σ (t >= {config.t_edit_pc}) changes the class of {report.numbers['pc0_class_change_rate']:.1%}"
        f" of samples; a random direction: {report.numbers['random_class_change_rate']:.1%}")

    start = time.perf_counter()
    digits, labels = load_heldout_digits()
    subset = balanced_subset(labels, config.real_digits)
    digits, labels = digits[subset], labels[subset]
    inversion = pipe.invert(digits, config.steps, progress=True)
    reconstruction = pipe.edit(inversion.x_T, inversion.sigmas)
    report.numbers["ddim_reconstruction_mae"] = round(float((reconstruction - digits).abs().mean()), 4)
    exact = pipe.invert(digits[:32].double(), config.steps, method="edit_friendly")
    regenerated = pipe.edit(exact.x_T, exact.sigmas, eta=exact.eta, noises=exact.noises)
    report.numbers["edit_friendly_relative_error"] = float((regenerated - digits[:32]).norm() / digits[:32].norm())
    report.timed("inversion", start)
    log(f"real digits: DDIM reconstruction MAE {report.numbers['ddim_reconstruction_mae']:.4f} ([-1, 1] scale); "
        f"edit-friendly regeneration relative error {report.numbers['edit_friendly_relative_error']:.1e}")

    start = time.perf_counter()
    targets = cyclic_targets(labels)
    groups = class_transfer_groups(pipe, inversion, labels, targets)
    for name, seed in (("class_transfer_hit_rate", None), ("class_transfer_random_hit_rate", 100)):
        edited = edit_groups(pipe, inversion.x_T, inversion.sigmas, groups, baseline_seed=seed, progress=True)
        report.numbers[name] = round(hit_rate(evaluator, edited, targets), 3)
    means, keys = class_means(inversion.trajectory, labels), inversion.trajectory.timesteps.tolist()
    firsts = torch.stack([(labels == c).nonzero()[0, 0] for c in range(10)])
    grid_groups = {(s, t): (torch.tensor([s * 10 + t]), class_direction(means, s, t, keys, pipe.fingerprint))
                   for s in range(10) for t in range(10) if s != t}  # row s*10+t: digit s edited towards t
    transferred = edit_groups(pipe, inversion.x_T[firsts.repeat_interleave(10)], inversion.sigmas, grid_groups)
    tiles = []
    for s in range(10):
        tiles += [digits[firsts[s]], reconstruction[firsts[s]], *transferred[s * 10:(s + 1) * 10]]
    image_grid(torch.stack(tiles), ncols=12, upscale=4, col_labels=["real", "rec"] + [str(t) for t in range(10)]).save(
        out / "class_transfer.png")
    report.timed("class transfer", start)
    log(f"class-to-class edits of real digits reach the target class {report.numbers['class_transfer_hit_rate']:.1%}"
        f" of the time; a random direction of the same norm: {report.numbers['class_transfer_random_hit_rate']:.1%}")


def _summary_markdown(report: Report) -> str:
    lines = ["# hspace demo report", "", "## Measured", ""]
    lines += [f"- {name}: {value}" for name, value in report.numbers.items()]
    lines += ["", "## Seconds", ""] + [f"- {name}: {value}" for name, value in report.seconds.items()]
    lines += ["", "## Pictures", ""]
    for picture in ("samples", "pca_spectrum", "pc0_sweep", "pc1_sweep", "ink_sweep", f"{DEMO_ATTRIBUTE}_raw_vs_disentangled",
                    f"{DEMO_ATTRIBUTE}_raw_evaluation", f"{DEMO_ATTRIBUTE}_disentangled_evaluation",
                    f"{DEMO_ATTRIBUTE}_class_keeping_evaluation", "class_transfer"):
        lines.append(f"![{picture}]({picture}.png)")
    lines += ["", "## Configuration", "", "```json", json.dumps(report.config, indent=2), "```", ""]
    return "\n".join(lines)
