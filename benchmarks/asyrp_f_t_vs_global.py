"""Asyrp's two inference modes on the embedded model, for one training run: the per-image f_t(h_t) at every edited
step (the paper's default) against the global Δh averaged from it (``--num_mean_of_delta_hs``).

No CLIP runs offline here, so f_t is trained with Asyrp's loop (train_delta_block: detached asymmetric steps, SGD,
the L1 term) but with the embedded digit classifier's −log p(target) standing in for the directional CLIP loss.
The same classifier then judges the edits, so the numbers compare the two modes with each other, not with the paper;
f_t is trained on one half of the source digits and both modes are measured on the other half.

    python benchmarks/asyrp_f_t_vs_global.py [--source 3] [--target 8] [--steps 20] [--t-edit 500] [--epochs 2]

lr 1 and lambda_l1 1 by default: with Asyrp's lr 0.5 and lambda_l1 3 this stand-in loss barely moves the digits
(p(8) 0.049 -> 0.068), with lr 2 the edit destroys them.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.discovery.asyrp import DeltaBlock, global_delta_h, sample_with_f_t, train_delta_block
from hspace_core.embedded import load_evaluator, load_heldout_digits
from hspace_core.pipeline import HSpacePipeline
from hspace_core.samplers import sample_asyrp


class ClassifierLoss(nn.Module):
    """−log p(target | P^edit): the stand-in for the directional CLIP loss (same interface)."""

    text_cosine = 1.0  # weights the L1 term: lambda_l1 * text_cosine

    def __init__(self, classifier: nn.Module, target: int):
        super().__init__()
        self.classifier, self.target = classifier.requires_grad_(False), target

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, edited: torch.Tensor, source: torch.Tensor | None = None,
                source_features: torch.Tensor | None = None) -> torch.Tensor:
        return -self.classifier(edited).log_softmax(dim=1)[:, self.target].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=int, default=3)
    parser.add_argument("--target", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--t-edit", type=float, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--lambda-l1", type=float, default=1.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe, classifier = HSpacePipeline.default(), load_evaluator()
    den = pipe.denoiser
    digits, labels = load_heldout_digits()
    chosen = digits[labels == args.source]
    train, test = chosen[0::2], chosen[1::2]
    sigmas = pipe.sigmas(args.steps)
    sigma_edit = float(den.schedule.sigma(torch.tensor(args.t_edit)))
    x_train, x_test = pipe.invert(train, args.steps).x_T, pipe.invert(test, args.steps).x_T

    block = DeltaBlock.for_unet(den.unet)
    start = time.perf_counter()
    history = train_delta_block(den, block, x_train, sigmas, sigma_edit, ClassifierLoss(classifier, args.target),
                                source="reference", epochs=args.epochs, lr=args.lr, lambda_l1=args.lambda_l1)
    seconds = time.perf_counter() - start
    direction = global_delta_h(den, block, x_train, sigmas, sigma_edit)
    print(f"embedded model, digits {args.source} -> {args.target}, {args.steps} steps, t_edit {args.t_edit:.0f}: "
          f"f_t trained on {len(train)} digits, {len(history)} steps in {seconds:.1f} s, "
          f"loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}; measured on the other {len(test)}")

    with torch.no_grad():
        plain = sample_asyrp(den, x_test, sigmas, sigma_edit=float("inf"), disable=True)
        per_image = sample_with_f_t(den, block, x_test, sigmas, sigma_edit)
        with den.attached(Bottleneck([EditSpec(direction, 1.0)])):
            global_mode = sample_asyrp(den, x_test, sigmas, sigma_edit=sigma_edit, disable=True)
        for name, images in (("unedited reconstruction", plain), ("per-image f_t(h_t)", per_image),
                             ("global mean delta h", global_mode)):
            probabilities = classifier(images).softmax(dim=1)
            predicted = probabilities.argmax(dim=1)
            print(f"  {name:24s} p({args.target}) {float(probabilities[:, args.target].mean()):.3f}   "
                  f"classified {args.target}: {float((predicted == args.target).float().mean()):.1%}   "
                  f"still {args.source}: {float((predicted == args.source).float().mean()):.1%}   "
                  f"RMS change vs unedited {float((images - plain).pow(2).mean().sqrt()):.3f}")


if __name__ == "__main__":
    main()
