"""Does a direction change one thing? Attribute measures of images and :func:`evaluate_direction` (issue 13).

An attribute measure is any function ``images [N, C, H, W] in [-1, 1] -> [N]``. The ones here treat the
image as a distribution of ink (pixel brightness mapped to [0, 1]) and read its moments, so they work for
any grey or colour image; on the embedded digit model they are the digit's slant, stroke thickness,
centre of mass, and size. ``evaluate_direction`` edits held-out starting noises at several strengths
(one batched run) and reports, per strength, how often the target attribute moved the intended way, how
far against random directions of the same norm, the change of every other attribute and of the class.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image, ImageDraw

from .arithmetic import random_like
from .bottleneck import EditSpec
from .checks import check_finite, check_number
from .direction import Direction
from .errors import HSpaceError
from .sites import MID_BLOCK

Measure = Callable[[torch.Tensor], torch.Tensor]


def _ink(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ink weights [N, H, W] (summed over channels, ≥ 0) and the pixel grids y, x in units of the image side."""
    if images.ndim != 4:
        raise HSpaceError(f"images [N, C, H, W] expected, got shape {list(images.shape)}")
    ink = ((images.detach().double().cpu() + 1) / 2).clamp(0, 1).sum(1)
    height, width = ink.shape[-2:]
    y = torch.arange(height, dtype=torch.float64).view(-1, 1) / height
    x = torch.arange(width, dtype=torch.float64).view(1, -1) / width
    return ink, y, x


def _moments(images: torch.Tensor) -> dict[str, torch.Tensor]:
    ink, y, x = _ink(images)
    mass = ink.sum((1, 2)).clamp(min=1e-9)
    cy = (ink * y).sum((1, 2)) / mass
    cx = (ink * x).sum((1, 2)) / mass
    dy, dx = y - cy.view(-1, 1, 1), x - cx.view(-1, 1, 1)
    var_y = (ink * dy ** 2).sum((1, 2)) / mass
    var_x = (ink * dx ** 2).sum((1, 2)) / mass
    cov = (ink * dx * dy).sum((1, 2)) / mass
    return {"cy": cy, "cx": cx, "var_y": var_y.clamp(min=1e-12), "var_x": var_x.clamp(min=1e-12), "cov": cov}


def slant(images: torch.Tensor) -> torch.Tensor:
    """How far the ink leans right going up: −cov(x, y) / var(y) (a shear; 0 upright, > 0 like '/')."""
    m = _moments(images)
    return -m["cov"] / m["var_y"]


def thickness(images: torch.Tensor) -> torch.Tensor:
    """Stroke thickness in pixels: the ink's area over half its outline length (sum of |gradient|), at most the
    image's shorter side (an image that is all ink, with no outline, would otherwise measure near infinity)."""
    ink, _, _ = _ink(images)
    outline = (ink.diff(dim=1).abs().sum((1, 2)) + ink.diff(dim=2).abs().sum((1, 2))) / 2
    return (ink.sum((1, 2)) / outline.clamp(min=1e-9)).clamp(max=min(ink.shape[-2:]))


def vertical_centre(images: torch.Tensor) -> torch.Tensor:
    """The ink's centre of mass from the top, as a fraction of the height."""
    return _moments(images)["cy"]


def horizontal_centre(images: torch.Tensor) -> torch.Tensor:
    """The ink's centre of mass from the left, as a fraction of the width."""
    return _moments(images)["cx"]


def aspect(images: torch.Tensor) -> torch.Tensor:
    """Width over height of the ink: std(x) / std(y)."""
    m = _moments(images)
    return (m["var_x"] / m["var_y"]).sqrt()


def ink(images: torch.Tensor) -> torch.Tensor:
    """The mean ink per pixel in [0, 1]."""
    values, _, _ = _ink(images)
    return values.mean((1, 2))


ATTRIBUTES: dict[str, Measure] = {"slant": slant, "thickness": thickness, "vertical_centre": vertical_centre,
                                  "horizontal_centre": horizontal_centre, "aspect": aspect, "ink": ink}


def measure_all(images: torch.Tensor, measures: Mapping[str, Measure]) -> dict[str, torch.Tensor]:
    """Every measure of every image, checked: ``{name: float64 [N]}``."""
    out = {}
    for name, measure in measures.items():
        values = torch.as_tensor(measure(images)).detach().double().cpu().flatten()
        if values.numel() != images.shape[0]:
            raise HSpaceError(f"attribute {name!r}: one value per image expected ({images.shape[0]}), "
                              f"got {values.numel()}")
        out[name] = check_finite(values, f"attribute {name!r}")
    return out


@dataclass
class StrengthResult:
    """The figures of one strength. Changes are in units of each attribute's std over the unedited samples."""

    strength: float
    intended_share: float  # samples whose target attribute moved the sign of the strength
    effect: float  # mean change of the target attribute towards the sign of the strength (std units)
    random_effect: float  # mean |change| of the target attribute under random directions of the same norm
    ratio_to_random: float
    class_kept: float  # samples the classifier still assigns their unedited class (nan without a classifier)
    random_class_kept: float
    other_changes: dict[str, float]  # mean |change| of every other attribute (std units)

    @property
    def worst_other_over_effect(self) -> float:
        """The largest other change over the target's effect (< 1/3 is the issue's goal)."""
        worst = max(self.other_changes.values(), default=0.0)
        return worst / self.effect if self.effect > 0 else float("inf")


@dataclass
class EvaluationResult:
    target: str
    samples: int
    attribute_stds: dict[str, float]
    strengths: list[StrengthResult] = field(default_factory=list)
    class_keeping: bool = False

    def at(self, strength: float) -> StrengthResult:
        for row in self.strengths:
            if row.strength == strength:
                return row
        raise HSpaceError(f"strength {strength} was not evaluated; evaluated: {[r.strength for r in self.strengths]}")

    @property
    def linearity(self) -> float:
        """Effect at ×2 over the effect at ×1, averaged over the signs evaluated (nan without both)."""
        ratios = []
        for sign in (1.0, -1.0):
            try:
                one, two = self.at(sign), self.at(2 * sign)
            except HSpaceError:
                continue
            ratios.append(two.effect / one.effect if one.effect > 0 else float("nan"))
        return sum(ratios) / len(ratios) if ratios else float("nan")

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(r), "worst_other_over_effect": r.worst_other_over_effect} for r in self.strengths]
        return {"target": self.target, "samples": self.samples, "class_keeping": self.class_keeping,
                "attribute_stds": self.attribute_stds, "linearity_x2_over_x1": self.linearity, "strengths": rows}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True)

    def report(self) -> str:
        """A plain-text table, one line per strength."""
        keeping = ", class-keeping edit" if self.class_keeping else ""
        lines = [f"target {self.target!r}, {self.samples} samples{keeping}; changes in std of each attribute",
                 "strength  intended  effect  random  x_random  class_kept  worst_other/effect"]
        for r in self.strengths:
            lines.append(f"{r.strength:+8.2f}  {r.intended_share:8.1%}  {r.effect:6.2f}  {r.random_effect:6.2f}  "
                         f"{r.ratio_to_random:8.1f}  {r.class_kept:10.1%}  {r.worst_other_over_effect:8.2f}")
        lines.append(f"linearity (effect x2 / x1): {self.linearity:.2f}")
        if self.strengths:
            row = max(self.strengths, key=lambda r: abs(r.strength) == 1.0)
            lines.append(f"other attributes at {row.strength:+.0f}: " +
                         ", ".join(f"{k} {v:.2f}" for k, v in row.other_changes.items()))
        return "\n".join(lines)

    def chart(self, size: tuple[int, int] = (720, 360)) -> Image.Image:
        """Per strength: the target's effect, the random baseline and every other attribute's change (std units)."""
        names = [self.target + " (target)", "random dir."] + sorted(self.strengths[0].other_changes)
        colours = [(200, 60, 40), (150, 150, 150)] + [(70, 110, 180)] * (len(names) - 2)
        width, height = size
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        left, top, bottom = 40, 28, 60
        draw.text((left, 6), f"|change| of each attribute (std units) per strength; class kept; "
                             f"linearity x2/x1 {self.linearity:.2f}", fill="black")
        values = [[r.effect, r.random_effect] + [r.other_changes[n] for n in names[2:]] for r in self.strengths]
        peak = max(max(abs(v) for v in row) for row in values) or 1.0
        slot = (width - left - 10) / len(self.strengths)
        bar = slot * 0.8 / len(names)
        base = height - bottom
        for i, (r, row) in enumerate(zip(self.strengths, values)):
            x0 = left + i * slot + slot * 0.1
            for j, value in enumerate(row):
                y0 = base - (base - top) * abs(value) / peak
                draw.rectangle([x0 + j * bar, y0, x0 + (j + 0.85) * bar, base], fill=colours[j])
            draw.text((x0, base + 4), f"{r.strength:+g}: {r.intended_share:.0%} moved", fill="black")
            draw.text((x0, base + 18), f"class kept {r.class_kept:.0%}", fill="black")
        draw.line([left, top, left, base], fill="black")
        draw.line([left, base, width - 10, base], fill="black")
        draw.text((2, top - 6), f"{peak:.2f}", fill="black")
        draw.text((left, height - 18), "bars: " + ", ".join(names[:2]) + ", then " + ", ".join(names[2:]),
                  fill="black")
        return image


def evaluate_direction(pipe: Any, direction: Direction, x_T: torch.Tensor, sigmas: torch.Tensor, target: str,
                       measures: Mapping[str, Measure] | None = None, classifier: Any | None = None,
                       strengths: Sequence[float] = (-2.0, -1.0, 1.0, 2.0), random_directions: int = 2,
                       t_edit: float | None = None, seed: int = 0, batch_size: int = 256,
                       allow_foreign: bool = False, keep_class: bool = False) -> EvaluationResult:
    """Edit the samples of ``x_T`` along ``direction`` at each strength and measure what changed.

    Args:
        pipe: an :class:`~hspace_core.pipeline.HSpacePipeline`; x_T, sigmas: held-out starting noises and
            their grid (``pipe.noise(seeds, sigmas)``), not the samples the direction was fitted on.
        target: the name of the attribute the direction should move (a key of ``measures``).
        measures: ``{name: images -> [N]}``, default :data:`ATTRIBUTES`.
        classifier: anything with ``predict(images) -> (labels, confidence)`` (the shipped digit evaluator);
            without one the class figures are nan.
        random_directions: random directions of the same per-step norm (``random_like``, seeds ``seed..``)
            the target's change is compared with, each at every strength.
        batch_size: samples per batched run (the strengths and random directions share runs).
        keep_class: edit with the class-keeping correction (:mod:`~hspace_core.class_keeping`), the random
            directions too, each sample keeping the classifier's class of its unedited image; the classifier must
            also map images to logits (``classifier(images) -> [N, classes]``, as the shipped evaluator does).
    """
    measures = dict(ATTRIBUTES if measures is None else measures)
    if target not in measures:
        raise HSpaceError(f"the target attribute must be one of the measures {sorted(measures)}, got {target!r}")
    strengths = [check_number(s, "a strength") for s in strengths]
    if not strengths or 0.0 in strengths or len(set(strengths)) != len(strengths):
        raise HSpaceError(f"distinct non-zero strengths expected, got {strengths}")
    check_number(random_directions, "random_directions", 1, integer=True)
    check_number(batch_size, "batch_size", 1, integer=True)
    n = x_T.shape[0] if x_T.ndim == 4 else 0
    if n < 2:
        raise HSpaceError(f"at least 2 held-out x_T [N, C, H, W] expected, got shape {list(x_T.shape)}")
    if keep_class and classifier is None:
        raise HSpaceError("a class-keeping evaluation needs the classifier")
    randoms = [random_like(direction, seed + i) for i in range(random_directions)]
    runs = [(d, s) for d in [direction, *randoms] for s in strengths]
    plain_images = pipe.edit(x_T, sigmas)
    plain_labels = classifier.predict(plain_images)[0] if keep_class else None

    chunks = max(1, batch_size // n)
    images = [plain_images]
    for start in range(0, len(runs), chunks):
        block = runs[start:start + chunks]
        edits = [EditSpec(d, s, torch.arange(i * n, (i + 1) * n)) for i, (d, s) in enumerate(block)]
        keep = {"keep_class": classifier, "labels": plain_labels.repeat(len(block))} if keep_class else {}
        images.append(pipe.edit(x_T.repeat(len(block), 1, 1, 1), sigmas, edits, t_edit=t_edit,
                                allow_foreign=allow_foreign, **keep))
    images = torch.cat(images).split(n)
    values = [measure_all(im, measures) for im in images]
    labels = [classifier.predict(im)[0].cpu() for im in images] if classifier is not None else None
    plain = values[0]
    stds = {k: float(v.std()) for k, v in plain.items()}
    for name, std in stds.items():
        if not std > 0:
            raise HSpaceError(f"attribute {name!r} is constant over the unedited samples; it cannot be measured")

    def change(run: int, name: str) -> torch.Tensor:
        return (values[run][name] - plain[name]) / stds[name]

    def kept(run: int) -> float:
        return float((labels[run] == labels[0]).double().mean()) if labels is not None else float("nan")

    result = EvaluationResult(target, n, stds, class_keeping=keep_class)
    for i, strength in enumerate(strengths):
        run = 1 + i
        random_runs = [1 + (r + 1) * len(strengths) + i for r in range(random_directions)]
        moved = change(run, target) * (1 if strength > 0 else -1)
        effect = float(moved.mean())
        random_effect = sum(float(change(r, target).abs().mean()) for r in random_runs) / random_directions
        result.strengths.append(StrengthResult(
            strength=strength, intended_share=float((moved > 0).double().mean()), effect=effect,
            random_effect=random_effect, ratio_to_random=effect / random_effect if random_effect > 0 else float("inf"),
            class_kept=kept(run), random_class_kept=sum(kept(r) for r in random_runs) / random_directions,
            other_changes={k: float(change(run, k).abs().mean()) for k in measures if k != target}))
    return result


def class_keeping_direction(pipe: Any, direction: Direction, x_T: torch.Tensor, sigmas: torch.Tensor, target: str,
                            classifier: Any, measures: Mapping[str, Measure] | None = None,
                            t_edit: float | None = None) -> Direction:
    """The direction scaled so that its class-keeping edit moves ``target`` as far at strength +1 as its plain edit
    does, both measured on the samples of ``x_T`` (seeds apart from the fitting and the evaluation ones; the
    attribute's std cancels in the ratio). ``meta["class_keeping_scale"]`` keeps the factor.

    The correction removes part of each shift, so per unit strength the class-keeping edit is weaker: compare the
    two at the same effect, not at the same strength.
    """
    effects = [evaluate_direction(pipe, direction, x_T, sigmas, target, measures, classifier, strengths=(1.0,),
                                  random_directions=1, t_edit=t_edit, keep_class=keep).at(1.0).effect
               for keep in (False, True)]
    if not (effects[0] > 0 and effects[1] > 0):
        raise HSpaceError(f"the direction moves {target!r} the wrong way or not at all at strength +1 (effect "
                          f"{effects[0]:.3g} std plain, {effects[1]:.3g} class-keeping): it cannot be scaled")
    scale = effects[0] / effects[1]
    return direction.with_delta(direction.delta * scale, class_keeping_scale=scale)


def embedded_model_of(direction: Direction) -> str:
    """The embedded model a direction was made on, by its hook site: ``"dit"`` at a transformer site, else
    ``"unet"`` (the middle block)."""
    return "unet" if direction.meta.get("hook_site", MID_BLOCK) == MID_BLOCK else "dit"


def evaluate_on_model(direction: Direction, target: str, model: str | None = None, samples: int = 128,
                      first_seed: int = 100000, steps: int = 20, strengths: Sequence[float] = (-2.0, -1.0, 1.0, 2.0),
                      random_directions: int = 2, t_edit: float | None = None,
                      allow_foreign: bool = False, keep_class: bool = False) -> EvaluationResult:
    """:func:`evaluate_direction` on seeds ``first_seed..`` of an embedded digit model (``None`` or ``"unet"``,
    ``"dit"``; judged by the shipped classifier) or of a diffusers pixel-DDPM folder ``model`` (no class figures:
    nan). ``keep_class``: edit with the class-keeping correction by the shipped classifier (embedded models only)."""
    from .pipeline import HSpacePipeline, is_embedded

    check_number(samples, "samples", 2, integer=True)
    check_number(first_seed, "first_seed", 0, integer=True)
    classifier = None
    if keep_class and not is_embedded(model):
        raise HSpaceError("a class-keeping edit needs the shipped classifier: evaluate on an embedded model "
                          "(unet or dit)")
    pipe = HSpacePipeline.load(model)
    if is_embedded(model):
        from .embedded import load_evaluator

        classifier = load_evaluator()
    sigmas = pipe.sigmas(steps)
    x_T = pipe.noise(range(first_seed, first_seed + samples), sigmas)
    return evaluate_direction(pipe, direction, x_T, sigmas, target, classifier=classifier, strengths=strengths,
                              random_directions=random_directions, t_edit=t_edit, allow_foreign=allow_foreign,
                              keep_class=keep_class)
