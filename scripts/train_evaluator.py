"""Train the digit classifier that judges the embedded default model's outputs (never run in CI).

It is trained on the 4,500 training digits only, separately from the diffusion model, and also writes
the 500 held-out digits the package ships. Usage (one thread, about a minute)::

    OMP_NUM_THREADS=1 python scripts/train_evaluator.py
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from _digits import load_digit_split, save_heldout_digits, to_model_range
from hspace_core.embedded import CONFIDENCE_THRESHOLD, NUM_CLASSES, DigitClassifier, default_model_dir


def random_shift(images: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (background padding), so the classifier does not
    rely on exact centring, which generated digits need not have."""
    padded = F.pad(images, [max_shift] * 4, value=-1.0)
    size = images.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])


def make_non_digits(digits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that are not one clear digit, with soft targets (outlier exposure): pixel noise, smooth blobs
    and blank frames get the uniform distribution, blends of two digits of different classes get the
    blend's mixture. Without them a CNN is confident on most noise images, which makes its confidence
    useless as a legibility score for generated digits."""
    count, size = len(digits), digits.shape[-1]
    kind = torch.randint(0, 4, (count,), generator=generator)
    uniform = torch.full((count, NUM_CLASSES), 1.0 / NUM_CLASSES)
    level = torch.rand(count, 1, 1, 1, generator=generator) * 2 - 1
    spread = torch.rand(count, 1, 1, 1, generator=generator) * 1.5 + 0.2
    pixel_noise = level + spread * torch.randn(digits.shape, generator=generator)
    coarse = torch.randn(count, 1, 4, 4, generator=generator)
    blobs = level + 2 * spread * F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    blank = level.expand_as(digits)
    partner = torch.randperm(count, generator=generator)
    weight = 0.35 + 0.3 * torch.rand(count, 1, 1, 1, generator=generator)
    blends = weight * digits + (1 - weight) * digits[partner]
    blend_targets = (weight.view(-1, 1) * F.one_hot(labels, NUM_CLASSES)
                     + (1 - weight.view(-1, 1)) * F.one_hot(labels[partner], NUM_CLASSES))
    same_class = labels == labels[partner]
    kind = torch.where((kind == 3) & same_class, torch.zeros_like(kind), kind)
    images = torch.stack([pixel_noise, blobs, blank, blends])[kind, torch.arange(count)]
    targets = torch.where((kind == 3).view(-1, 1), blend_targets, uniform)
    return images.clamp(-1, 1), targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--non-digit-weight", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    (train_uint8, train_labels), (heldout_uint8, heldout_labels) = load_digit_split()
    output_dir = default_model_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    save_heldout_digits(heldout_uint8, heldout_labels, output_dir / "heldout_digits.safetensors")

    train_images, train_targets = to_model_range(train_uint8), torch.from_numpy(train_labels)
    heldout_images, heldout_targets = to_model_range(heldout_uint8), torch.from_numpy(heldout_labels)
    classifier = DigitClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = (len(train_images) + args.batch_size - 1) // args.batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        classifier.train()
        order = torch.randperm(len(train_images), generator=generator)
        total_loss = 0.0
        for batch_start in range(0, len(order), args.batch_size):
            batch = order[batch_start:batch_start + args.batch_size]
            digits = random_shift(train_images[batch], generator)
            non_digits, non_digit_targets = make_non_digits(digits, train_targets[batch], generator)
            logits = classifier(torch.cat([digits, non_digits]))
            loss = (F.cross_entropy(logits[:len(batch)], train_targets[batch])
                    + args.non_digit_weight * soft_cross_entropy(logits[len(batch):], non_digit_targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
        classifier.eval()
        predicted, _ = classifier.predict(heldout_images)
        accuracy = (predicted == heldout_targets).float().mean().item()
        print(f"epoch {epoch + 1}: train loss {total_loss / len(order):.4f}, held-out accuracy {accuracy:.4f}",
              flush=True)

    classifier.eval()
    predicted, confidence = classifier.predict(heldout_images)
    accuracy = (predicted == heldout_targets).float().mean().item()
    confident = (confidence >= CONFIDENCE_THRESHOLD).float().mean().item()
    save_file({name: tensor.contiguous() for name, tensor in classifier.state_dict().items()},
              str(output_dir / "evaluator.safetensors"))
    print(f"trained in {time.perf_counter() - start:.0f} s; held-out accuracy {accuracy:.4f}; "
          f"confident (p >= {CONFIDENCE_THRESHOLD}) on {confident:.4f} of held-out real digits")
    for name, images in noise_probes().items():
        _, confidence = classifier.predict(images)
        print(f"confident on {(confidence >= CONFIDENCE_THRESHOLD).float().mean().item():.4f} of {name}")


def noise_probes(count: int = 256, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Non-digit images drawn apart from training, to check the classifier is not confident on them."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "Gaussian noise (clamped)": torch.randn(count, 1, 16, 16, generator=generator).clamp(-1, 1),
        "uniform noise": torch.rand(count, 1, 16, 16, generator=generator) * 2 - 1,
    }


if __name__ == "__main__":
    main()
