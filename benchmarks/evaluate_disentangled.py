"""Raw vs disentangled attribute directions on the embedded digit model, against issue 13's goals, out of sample.

Directions are fitted on h captured over seeds fit-seed.. (scored by the attribute measures of
hspace_core.evaluation, labelled by the shipped classifier) and measured on other seeds (test-seed..) with
evaluate_direction. Variants:

- raw: Haas's recipe as the demo used it, top-1/8 minus bottom-1/8 mean h, in its own units;
- raw_per_std: the same samples' top-1/4 minus bottom-1/4, scaled to one std of the score (the disentangled
  variants' units, so the effect of the scale alone is visible);
- stratified: top vs bottom quarter within each class, per std (the class confound removed);
- disentangled: stratified on the scores' residual after regressing them on x_T statistics (the default of
  attribute_direction);
- noise_projected: stratified, with the h directions scored by each x_T statistic projected out instead of
  the scores' residual (the other noise correction);
- disentangled_projected: disentangled, with the other attributes' disentangled directions and the 9
  class-mean directions projected out jointly (Haas's conditional manipulation).

Every variant gets the cheap |cos| with the x_T-statistic directions; ``--evaluate`` names those edited and
measured (each costs about 2 minutes on 2 shared CPU cores at 32 samples). A variant named ``<variant>+keep`` in
``--evaluate`` is that direction edited with the class-keeping correction (hspace_core.class_keeping, about 3x
the time), scaled first (``class_keeping_direction``, on ``--calibrate`` other seeds from calibration-seed) so that
its edit moves the target as far as the plain edit of the same direction does: the two are compared at the same
effect, not at the same strength.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/evaluate_disentangled.py [--model dit]
"""
from __future__ import annotations

import argparse
import time

import torch

from hspace_core.direction import Direction
from hspace_core.discovery.attribute import (attribute_direction, noise_statistics, stratified_mean_difference)
from hspace_core.discovery.supervised import supervised_direction
from hspace_core.embedded import load_evaluator
from hspace_core.errors import HSpaceError
from hspace_core.evaluation import ATTRIBUTES, class_keeping_direction, evaluate_direction, measure_all
from hspace_core.experiments import class_means
from hspace_core.pipeline import HSpacePipeline

GOALS = {"intended_share": 0.9, "x_random": 5.0, "class_kept": 0.8, "worst_other_over_target": 1 / 3,
         "linearity": 1.5}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("unet", "dit"), default="unet", help="the embedded model measured")
    parser.add_argument("--fit-samples", type=int, default=1024)
    parser.add_argument("--test-samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--attributes", default="slant,thickness,vertical_centre")
    parser.add_argument("--variants", default="raw,raw_per_std,stratified,disentangled,noise_projected,"
                                               "disentangled_projected")
    parser.add_argument("--evaluate", default="slant:raw,disentangled,disentangled_projected;"
                                              "thickness:raw,disentangled;vertical_centre:raw,disentangled",
                        help="attribute:variant,... groups separated by ';' (edited and measured)")
    parser.add_argument("--random-directions", type=int, default=1)
    parser.add_argument("--fit-seed", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=100000)
    parser.add_argument("--calibrate", type=int, default=64, help="samples the +keep variants are scaled on")
    parser.add_argument("--calibration-seed", type=int, default=200000)
    args = parser.parse_args()

    pipe, classifier = HSpacePipeline.load(args.model), load_evaluator()
    sigmas = pipe.sigmas(args.steps)
    start = time.perf_counter()
    seeds = range(args.fit_seed, args.fit_seed + args.fit_samples)
    trajectory, images = pipe.capture(seeds, args.steps, batch_size=256)
    x_T = pipe.noise(seeds, sigmas)
    labels = classifier.predict(images)[0]
    scores = measure_all(images, ATTRIBUTES)
    h, keys = trajectory.h, trajectory.timesteps.tolist()
    print(f"fitted on {args.fit_samples} generated samples (seeds {seeds.start}..), {time.perf_counter() - start:.0f} s")
    noise_features = noise_statistics(x_T)
    noise_directions = [stratified_mean_difference(h, f, labels, per_std=True) for f in noise_features.T]
    held_out = pipe.noise(range(args.test_seed, args.test_seed + args.test_samples), sigmas)
    calibration = pipe.noise(range(args.calibration_seed, args.calibration_seed + args.calibrate), sigmas)
    everyone = torch.zeros(len(labels), dtype=torch.long)
    means = class_means(trajectory, labels)
    class_directions = list(means[1:] - means[:1])

    def build(variant: str, target: str) -> torch.Tensor:
        s = scores[target]
        if variant == "raw":
            return supervised_direction(h, s, len(s) // 8)
        if variant == "raw_per_std":
            return stratified_mean_difference(h, s, everyone, per_std=True)
        if variant == "stratified":
            return attribute_direction(h, s, groups=labels)
        if variant == "disentangled":
            return attribute_direction(h, s, groups=labels, x_T=x_T)
        if variant == "noise_projected":
            return attribute_direction(h, s, groups=labels, nuisance=noise_directions)
        if variant == "disentangled_projected":
            others = [attribute_direction(h, scores[o], groups=labels, x_T=x_T) for o in ATTRIBUTES if o != target]
            return attribute_direction(h, s, groups=labels, x_T=x_T, nuisance=others + class_directions)
        raise SystemExit(f"unknown variant {variant!r}")

    print("\nlargest |cos| with the directions scored by the 16 x_T statistics (the noise leak; 0 = none):")
    print(f"{'attribute':16}" + "".join(f"{v:>24}" for v in args.variants.split(",")))
    for target in args.attributes.split(","):
        print(f"{target:16}" + "".join(f"{max(abs(cosine(build(v, target), d)) for d in noise_directions):24.2f}"
                                       for v in args.variants.split(",")))
    rows = []
    for group in args.evaluate.split(";"):
        target, variants = group.split(":")
        for variant in variants.split(","):
            keep = variant.endswith("+keep")
            delta = build(variant.removesuffix("+keep"), target)
            noise_cos = max(abs(cosine(delta, d)) for d in noise_directions)
            start = time.perf_counter()
            direction = Direction(delta, keys, {"fingerprint": pipe.fingerprint})
            if keep:
                try:
                    direction = class_keeping_direction(pipe, direction, calibration, sigmas, target, classifier)
                except HSpaceError as error:
                    print(f"\n== {target} / {variant}: not measured: {error}", flush=True)
                    continue
            scale = direction.meta.get("class_keeping_scale", 1.0)
            result = evaluate_direction(pipe, direction, held_out, sigmas, target, classifier=classifier,
                                        random_directions=args.random_directions, keep_class=keep)
            ones = [result.at(-1.0), result.at(1.0)]
            figures = {"intended_share": min(r.intended_share for r in ones),
                       "x_random": min(r.ratio_to_random for r in ones),
                       "class_kept": min(r.class_kept for r in ones),
                       "worst_other_over_target": max(r.worst_other_over_effect for r in ones),
                       "linearity": result.linearity}
            rows.append((target, variant, figures, noise_cos, result))
            print(f"\n== {target} / {variant}: |cos| with x_T-statistic directions at most {noise_cos:.2f}, scaled "
                  f"x{scale:.2f} ({time.perf_counter() - start:.0f} s)\n{result.report()}", flush=True)

    print(f"\nGoals at strengths +-1 on {args.test_samples} held-out seeds (worst of the two signs; linearity: mean "
          f"of x2/x1 over both signs). Effects in std of each attribute over the unedited held-out samples.")
    header = f"{'attribute':16} {'variant':18}" + "".join(f"{name:>24}" for name in GOALS) + "  noise |cos|"
    print(header)
    print(f"{'goal':35}" + "".join(f"{('<' if 'other' in n else '>=') + format(g, '.2f'):>24}" for n, g in GOALS.items()))
    for target, variant, figures, noise_cos, _ in rows:
        cells = []
        for name, goal in GOALS.items():
            met = figures[name] < goal if "other" in name else figures[name] >= goal
            cells.append(f"{figures[name]:.2f} {'met' if met else 'missed':>6}")
        print(f"{target:16} {variant:18}" + "".join(f"{c:>24}" for c in cells) + f"  {noise_cos:.2f}")


if __name__ == "__main__":
    main()
