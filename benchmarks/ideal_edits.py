"""What an ideal attribute edit does to the class and the other measures: the reference for issue 13's goals.

The unedited held-out samples of the embedded model (seeds test-seed.., the seeds evaluate_disentangled.py
measures on) are edited in pixel space, by the amount that changes the attribute's measure by each strength in
std of that measure over those samples (found by bisection over amounts -1..1, where the change grows with the
amount; past them a squashed or eroded 16x16 digit stops changing the way the amount says):

- slant: a shear about each digit's own centre-of-mass row;
- aspect: a horizontal stretch about each digit's own centre-of-mass column, by a factor exp(amount);
- thickness: the ink blended with its grey-scale dilation (amount > 0) or erosion (< 0) by a 3x3 window,
  whole pixels first, the fraction last (amount 1.5: dilated once, then half-way to twice).

The shipped classifier then says how often the class is kept, and the other attribute measures how much they
moved per unit of the target's change (in their own std), as evaluate_direction reports them for h-space
directions. Bilinear resampling thickens and thins strokes a little, so the sheared and stretched thickness
figures include that.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/ideal_edits.py [--attribute thickness] [--model dit]
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

from hspace_core.embedded import load_evaluator
from hspace_core.evaluation import ATTRIBUTES, horizontal_centre, measure_all, vertical_centre
from hspace_core.pipeline import HSpacePipeline


def _resample(images: torch.Tensor,
              source_x: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Each pixel (x, y) takes the input at (source_x(x, y), y), bilinearly, in units of the image side."""
    n, _, height, width = images.shape
    y = (torch.arange(height) / height).view(1, -1, 1).expand(n, height, width)
    x = (torch.arange(width) / width).view(1, 1, -1).expand(n, height, width)
    grid = torch.stack([source_x(x, y) * 2 + 1 / width - 1, y * 2 + 1 / height - 1], dim=-1)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shear(images: torch.Tensor, amount: float) -> torch.Tensor:
    """Each image sheared about its own centre-of-mass row: the pixel at (x, y) takes the input at
    x + amount (y - cy)."""
    cy = vertical_centre(images).float().view(-1, 1, 1)
    return _resample(images, lambda x, y: x + amount * (y - cy))


def stretch(images: torch.Tensor, amount: float) -> torch.Tensor:
    """Each image stretched horizontally by exp(amount) about its own centre-of-mass column."""
    cx = horizontal_centre(images).float().view(-1, 1, 1)
    return _resample(images, lambda x, y: cx + (x - cx) * math.exp(-amount))


def thicken(images: torch.Tensor, amount: float) -> torch.Tensor:
    """Grey-scale dilation (amount > 0) or erosion (< 0) of the ink (bright on dark) by a 3x3 window, |amount|
    times, the fractional part as a blend with one more pass."""
    sign = 1.0 if amount >= 0 else -1.0

    def grow(x: torch.Tensor) -> torch.Tensor:
        return sign * torch.nn.functional.max_pool2d(sign * x, 3, stride=1, padding=1)

    whole, fraction = divmod(abs(amount), 1.0)
    out = images
    for _ in range(int(whole)):
        out = grow(out)
    return out + fraction * (grow(out) - out) if fraction else out


EDITS = {"slant": shear, "aspect": stretch, "thickness": thicken}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attribute", choices=tuple(EDITS), default="slant")
    parser.add_argument("--model", choices=("unet", "dit"), default="unet")
    parser.add_argument("--test-samples", type=int, default=128)
    parser.add_argument("--test-seed", type=int, default=100000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    target, edit = args.attribute, EDITS[args.attribute]
    pipe, classifier = HSpacePipeline.load(args.model), load_evaluator()
    sigmas = pipe.sigmas(args.steps)
    plain = pipe.edit(pipe.noise(range(args.test_seed, args.test_seed + args.test_samples), sigmas), sigmas).float()
    labels = classifier.predict(plain)[0].cpu()
    before = measure_all(plain, ATTRIBUTES)
    stds = {name: float(values.std()) for name, values in before.items()}

    def change(amount: float) -> float:
        return float(((measure_all(edit(plain, amount), ATTRIBUTES)[target] - before[target]) / stds[target]).mean())

    print(f"{args.test_samples} held-out samples of the embedded {args.model}; changes in std of each attribute")
    for strength in (-2.0, -1.0, 1.0, 2.0):
        low, high = -1.0, 1.0
        if not change(low) < strength < change(high):
            print(f"{target} {strength:+.0f} std: out of reach of the {edit.__name__} amounts -1..1")
            continue
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if change(middle) < strength else (low, middle)
        amount = (low + high) / 2
        edited = edit(plain, amount)
        after = measure_all(edited, ATTRIBUTES)
        moved = (after[target] - before[target]) / stds[target] * math.copysign(1, strength)
        kept = float((classifier.predict(edited)[0].cpu() == labels).double().mean())
        others = {name: float(((after[name] - before[name]) / stds[name]).abs().mean()) for name in ATTRIBUTES
                  if name != target}
        print(f"{target} {strength:+.0f} std ({edit.__name__} {amount:+.3f}): intended "
              f"{float((moved > 0).double().mean()):.1%}, class kept {kept:.1%}; others / target: "
              + ", ".join(f"{name} {value / abs(strength):.2f}" for name, value in others.items()))


if __name__ == "__main__":
    main()
