"""What an ideal slant edit does to the class: the reference for issue 13's "class kept" goal.

The unedited held-out samples of the embedded model (seeds test-seed.., the seeds evaluate_disentangled.py
measures on) are sheared in pixel space about each digit's own centre of mass, by the amount that changes the
slant measure by each strength in std of the slant over those samples (found by bisection: the change grows
with the shear). The shipped classifier then says how often the class is kept, and the other attribute measures
how much they moved (in their own std), as evaluate_direction reports them for h-space directions. Bilinear
resampling thickens and thins strokes a little, so the thickness figures include that.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/ideal_slant_edit.py [--model dit] [--test-samples 128]
"""
from __future__ import annotations

import argparse

import torch

from hspace_core.embedded import load_evaluator
from hspace_core.evaluation import ATTRIBUTES, measure_all, vertical_centre
from hspace_core.pipeline import HSpacePipeline


def shear(images: torch.Tensor, amount: float) -> torch.Tensor:
    """Each image sheared about its own centre-of-mass row: the pixel at (x, y) takes the input at
    x + amount (y - cy), in units of the image side."""
    n, _, height, width = images.shape
    cy = vertical_centre(images).float().view(-1, 1, 1)
    y = (torch.arange(height) / height).view(1, -1, 1).expand(n, height, width)
    x = (torch.arange(width) / width).view(1, 1, -1).expand(n, height, width)
    grid = torch.stack([(x + amount * (y - cy)) * 2 + 1 / width - 1, y * 2 + 1 / height - 1], dim=-1)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("unet", "dit"), default="unet")
    parser.add_argument("--test-samples", type=int, default=128)
    parser.add_argument("--test-seed", type=int, default=100000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    pipe, classifier = HSpacePipeline.load(args.model), load_evaluator()
    sigmas = pipe.sigmas(args.steps)
    plain = pipe.edit(pipe.noise(range(args.test_seed, args.test_seed + args.test_samples), sigmas), sigmas).float()
    labels = classifier.predict(plain)[0].cpu()
    before = measure_all(plain, ATTRIBUTES)
    stds = {name: float(values.std()) for name, values in before.items()}

    def slant_change(amount: float) -> float:
        return float(((measure_all(shear(plain, amount), ATTRIBUTES)["slant"] - before["slant"]) / stds["slant"]).mean())

    print(f"{args.test_samples} held-out samples of the embedded {args.model}; changes in std of each attribute")
    for strength in (-2.0, -1.0, 1.0, 2.0):
        low, high = -2.0, 2.0
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if slant_change(middle) < strength else (low, middle)
        edited = shear(plain, (low + high) / 2)
        after = measure_all(edited, ATTRIBUTES)
        moved = (after["slant"] - before["slant"]) / stds["slant"] * (1 if strength > 0 else -1)
        kept = float((classifier.predict(edited)[0].cpu() == labels).double().mean())
        others = ", ".join(f"{name} {float(((after[name] - before[name]) / stds[name]).abs().mean()):.2f}"
                           for name in ATTRIBUTES if name != "slant")
        print(f"slant {strength:+.0f} std (shear {(low + high) / 2:+.3f}): intended {float((moved > 0).double().mean()):.1%}, "
              f"class kept {kept:.1%}; others: {others}")


if __name__ == "__main__":
    main()
