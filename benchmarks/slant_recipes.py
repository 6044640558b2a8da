"""Other recipes for a slant direction that keeps the class (issue 13), against the default disentangled one.

Fitted on generated samples (seeds 0..fit-samples-1, classes from the shipped classifier), measured on the
held-out seeds evaluate_disentangled.py uses (100000..), strengths +-1 (one std of slant):

- default: ``attribute_direction`` (x_T residual scores, stratified by class, averaged), all steps;
- the same in other timestep windows (``edit_window``), at the strength that moves slant one std;
- paired: the mean DDIM-inverted h of the fitted samples sheared by one std of slant (benchmarks/ideal_edits.py)
  minus that of the same samples unsheared, so that nothing but the shear differs;
- own class: each held-out sample edited with its own class's within-class direction (the stratified recipe
  without the averaging), one EditSpec per class.

Global directions are measured by ``evaluate_direction``; the own-class edit by the same figures computed here.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/slant_recipes.py
"""
from __future__ import annotations

import argparse

import torch
from ideal_edits import shear

from hspace_core.bottleneck import EditSpec
from hspace_core.direction import Direction
from hspace_core.discovery.attribute import attribute_direction, noise_residual_scores, stratified_mean_difference
from hspace_core.embedded import load_evaluator
from hspace_core.evaluation import ATTRIBUTES, evaluate_direction, measure_all
from hspace_core.pipeline import HSpacePipeline

SHEAR_PER_STD = 0.223  # benchmarks/ideal_edits.py: the shear that moves the held-out samples' slant +1 std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit-samples", type=int, default=1024)
    parser.add_argument("--test-samples", type=int, default=128)
    args = parser.parse_args()

    pipe, classifier = HSpacePipeline.load("unet"), load_evaluator()
    sigmas = pipe.sigmas(20)
    seeds = range(args.fit_samples)
    trajectory, images = pipe.capture(seeds, 20, batch_size=256)
    x_T, labels = pipe.noise(seeds, sigmas), classifier.predict(images)[0]
    slant = measure_all(images, ATTRIBUTES)["slant"]
    keys = trajectory.timesteps.tolist()
    held_out = pipe.noise(range(100000, 100000 + args.test_samples), sigmas)

    def direction(delta: torch.Tensor, timesteps: list[float] = keys, **meta) -> Direction:
        return Direction(delta, timesteps, {"fingerprint": pipe.fingerprint, **meta})

    def report(name: str, edited: Direction) -> None:
        result = evaluate_direction(pipe, edited, held_out, sigmas, "slant", classifier=classifier,
                                    strengths=(-1.0, 1.0), random_directions=1)
        rows = [result.at(s) for s in (-1.0, 1.0)]
        print(f"{name:28} effect {rows[0].effect:.2f} / {rows[1].effect:.2f}  intended "
              f"{min(r.intended_share for r in rows):.1%}  class kept {rows[0].class_kept:.1%} / {rows[1].class_kept:.1%}"
              f"  worst other / target {max(r.worst_other_over_effect for r in rows):.2f}  (random direction of the "
              f"same norm: class kept {min(r.random_class_kept for r in rows):.1%})", flush=True)

    default = attribute_direction(trajectory.h, slant, groups=labels, x_T=x_T)
    report("default", direction(default))
    for window in ((0, 600), (0, 400), (200, 800), (600, 1000)):
        probe = evaluate_direction(pipe, direction(default, edit_window=list(window)), held_out, sigmas, "slant",
                                   strengths=(1.0,), random_directions=1).at(1.0).effect
        report(f"default, t in {window}, x{1 / probe:.2f}", direction(default / probe, edit_window=list(window)))

    fitted = pipe.edit(pipe.noise(seeds, sigmas), sigmas).float().clamp(-1, 1)
    original, sheared = (pipe.invert(x, steps=20).trajectory for x in (fitted, shear(fitted, SHEAR_PER_STD).clamp(-1, 1)))
    paired = (sheared.h.double() - original.h.double()).mean(0).float()
    report("paired (inverted shear)", direction(paired, original.timesteps.tolist()))

    residual = noise_residual_scores(slant, x_T)
    own = {}
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        if len(rows) >= 8:  # per std of the residual over all samples, as the averaged direction
            own[c] = stratified_mean_difference(trajectory.h[rows], residual[rows], torch.zeros(len(rows)),
                                                per_std=True) * float(residual.std() / residual[rows].std())
    plain = pipe.edit(held_out, sigmas)
    plain_labels, before = classifier.predict(plain)[0].cpu(), measure_all(plain, ATTRIBUTES)
    stds = {name: float(values.std()) for name, values in before.items()}
    figures = []
    for strength in (-1.0, 1.0):
        edits = [EditSpec(direction(own.get(c, default)), strength, (plain_labels == c).nonzero().flatten())
                 for c in plain_labels.unique().tolist()]
        edited = pipe.edit(held_out, sigmas, edits)
        after, edited_labels = measure_all(edited, ATTRIBUTES), classifier.predict(edited)[0].cpu()
        moved = (after["slant"] - before["slant"]) / stds["slant"] * strength
        others = max(float(((after[n] - before[n]) / stds[n]).abs().mean()) for n in after if n != "slant")
        figures.append((float(moved.mean()), float((moved > 0).double().mean()),
                        float((edited_labels == plain_labels).double().mean()), others / float(moved.mean())))
    print(f"{'own class':28} effect {figures[0][0]:.2f} / {figures[1][0]:.2f}  intended "
          f"{min(f[1] for f in figures):.1%}  class kept {figures[0][2]:.1%} / {figures[1][2]:.1%}  worst other / "
          f"target {max(f[3] for f in figures):.2f}")


if __name__ == "__main__":
    main()
