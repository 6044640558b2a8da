"""The figures of an embedded model, measured in one run (the README's "Measured on the embedded model").

Prints: DDIM inversion reconstruction error and exact (edit-friendly) regeneration error on real held-out
digits; class-to-class edit success vs a random direction of the same per-step norm (asymmetric and
symmetric); the effect vs strength; the top PCs' class-change rate vs random; timings.

    python benchmarks/figures_default_model.py [--model unet|dit] [--steps 20] [--digits 500] [--samples 400]

``--model dit`` measures the embedded flow-matching DiT (unconditional, h at its middle block's output, flow
sampler on the uniform grid) with the same calls.
"""
from __future__ import annotations

import argparse
import time

import torch

from hspace_core.arithmetic import random_like
from hspace_core.discovery.pca import pca_directions
from hspace_core.embedded import load_evaluator, load_heldout_digits
from hspace_core.experiments import balanced_subset, change_rate, class_transfer_groups, cyclic_targets, edit_groups, hit_rate
from hspace_core.direction import Inversion
from hspace_core.pipeline import HSpacePipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("unet", "dit"), default="unet")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--digits", type=int, default=500)
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe, evaluator = HSpacePipeline.load(args.model), load_evaluator()
    print(f"embedded {args.model} (h at {pipe.fingerprint.get('site', 'mid_block.output')}), {args.steps} "
          f"{'flow' if pipe.flow else 'DDIM'} steps, {torch.get_num_threads()} threads")

    digits, labels = load_heldout_digits()
    subset = balanced_subset(labels, args.digits)
    digits, labels = digits[subset], labels[subset]
    start = time.perf_counter()
    inversion = pipe.invert(digits, args.steps)
    seconds_inversion = time.perf_counter() - start
    reconstruction = pipe.edit(inversion.x_T, inversion.sigmas)
    print(f"DDIM inversion + reconstruction of {len(digits)} real digits: MAE {float((reconstruction - digits).abs().mean()):.4f} "
          f"([-1, 1] scale), real-digit accuracy of the classifier {hit_rate(evaluator, digits, labels):.3f}, "
          f"on reconstructions {hit_rate(evaluator, reconstruction, labels):.3f}; inversion {seconds_inversion:.1f} s")
    exact = pipe.invert(digits[:64].double(), args.steps, method="edit_friendly")
    regenerated = pipe.edit(exact.x_T, exact.sigmas, eta=exact.eta, noises=exact.noises)
    print(f"edit-friendly inversion + regeneration (float64 states): relative error "
          f"{float((regenerated - digits[:64]).norm() / digits[:64].norm()):.2e}")

    targets = cyclic_targets(labels)
    groups = class_transfer_groups(pipe, inversion, labels, targets)
    # out of sample: class means fitted on one half of the digits, the other half edited, and the other way round;
    # and class means of generated samples labelled by the classifier
    rank = torch.empty_like(labels)  # position of each digit among those of its class: halves of equal classes
    for c in labels.unique():
        rank[labels == c] = torch.arange(int((labels == c).sum()))
    halves = (rank % 2 == 0, rank % 2 == 1)
    start = time.perf_counter()
    generated, generated_images = pipe.capture(range(args.samples), args.steps, batch_size=200)
    seconds_capture = time.perf_counter() - start
    generated_fit = (generated, evaluator.predict(generated_images)[0])
    for name, fits in (("in sample", None), ("fitted on the other half", halves), ("fitted on generated samples", "gen")):
        hits = []
        for measured in halves:
            part = Inversion(inversion.x_T[measured], inversion.sigmas, None, 0.0, inversion.trajectory.select(measured))
            if fits is None:
                fit = None
            elif fits == "gen":
                fit = generated_fit
            else:
                other = ~measured
                fit = (inversion.trajectory.select(other), labels[other])
            part_groups = class_transfer_groups(pipe, part, labels[measured], targets[measured], fit=fit)
            edited = edit_groups(pipe, part.x_T, part.sigmas, part_groups, 1.0)
            hits.append(hit_rate(evaluator, edited, targets[measured]))
        print(f"class-to-class edit (asymmetric, all steps, strength 1), {name}: target-class hit rate "
              f"{sum(hits) / 2:.3f} (halves {hits[0]:.3f}, {hits[1]:.3f})")
    for mode in ("asymmetric", "symmetric"):
        start = time.perf_counter()
        rates = {s: hit_rate(evaluator, edit_groups(pipe, inversion.x_T, inversion.sigmas, groups, s, mode=mode), targets)
                 for s in (0.25, 0.5, 1.0, 1.5)}
        random = hit_rate(evaluator, edit_groups(pipe, inversion.x_T, inversion.sigmas, groups, 1.0, mode=mode,
                                                 baseline_seed=0), targets)
        print(f"class-to-class edit ({mode}, all steps), target-class hit rate by strength "
              + ", ".join(f"{s}: {r:.3f}" for s, r in rates.items())
              + f"; random direction of the same per-step norm at 1.0: {random:.3f} "
              f"({time.perf_counter() - start:.1f} s)")

    start = time.perf_counter()
    trajectory, images = generated, generated_images
    pca = pca_directions(trajectory, num_components=4)
    print(f"capture of {args.samples} samples + PCA: {seconds_capture + time.perf_counter() - start:.1f} s; "
          f"explained variance ratio at t=T {[round(v, 3) for v in pca.explained_variance_ratio[0].tolist()]}")
    sigmas = pipe.sigmas(args.steps)
    x_T = pipe.noise(range(args.samples), sigmas)
    reference = evaluator.predict(images)[0]
    for k in range(2):
        d = pca.to_direction(k, trajectory.timesteps)
        for t_edit in (400, 0):
            rates = [change_rate(evaluator, pipe.edit(x_T, sigmas, [(d, s)], t_edit=t_edit), reference) for s in (0.5, 1, 2)]
            random = change_rate(evaluator, pipe.edit(x_T, sigmas, [(random_like(d, 5), 1.0)], t_edit=t_edit), reference)
            print(f"PC{k} (asymmetric, t >= {t_edit}) class-change rate at +0.5/1/2 sigma: "
                  + "/".join(f"{r:.3f}" for r in rates) + f"; random at 1 sigma: {random:.3f}")


if __name__ == "__main__":
    main()
