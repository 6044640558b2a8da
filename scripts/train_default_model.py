"""Train the embedded default diffusion model on 16x16 MNIST digits (never run in CI).

A diffusers ``UNet2DModel`` (epsilon prediction, DDPM linear betas 1e-4..0.02 over 1000 steps) trained on
the 4,500 training digits of ``_digits.load_digit_split``; the EMA weights go to
``hspace_core/default_model/unet`` with ``scheduler_config.json``, then samples are drawn, judged by the
evaluator (train it first: ``scripts/train_evaluator.py``) and shown in ``samples.png``. Usage::

    OMP_NUM_THREADS=1 nice -n 5 python scripts/train_default_model.py          # ~35 min on one core
    OMP_NUM_THREADS=1 python scripts/train_default_model.py --evaluate-only    # samples + numbers only
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from _digits import IMAGE_SIZE, load_digit_split, to_model_range
from hspace_core.embedded import (CONFIDENCE_THRESHOLD, default_model_dir, load_default_unet, load_evaluator,
                                  load_heldout_digits)
from hspace_core.imaging import image_grid


def build_unet() -> UNet2DModel:
    """About 1.1 M parameters; the mid block (the h-space) works at 4x4 with 64 channels."""
    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         prediction_type="epsilon", clip_sample=True)


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema_unet: UNet2DModel, unet: UNet2DModel, step: int, max_decay: float) -> None:
    """EMA with the usual warm-up ``decay = min(max_decay, (1 + step) / (10 + step))``."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for ema_parameter, parameter in zip(ema_unet.parameters(), unet.parameters()):
        ema_parameter.lerp_(parameter, 1 - decay)


@torch.no_grad()
def sample_digits(unet: UNet2DModel, count: int, steps: int, seed: int, ddpm: bool = False) -> torch.Tensor:
    """``count`` digits in [-1, 1]: DDIM (eta 0) with ``steps`` steps, or ancestral DDPM with all 1000."""
    config = build_scheduler().config
    scheduler = DDPMScheduler.from_config(config) if ddpm else DDIMScheduler.from_config(config)
    scheduler.set_timesteps(1000 if ddpm else steps)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    for timestep in scheduler.timesteps:
        eps = unet(images, timestep).sample
        images = scheduler.step(eps, timestep, images, generator=generator).prev_sample
    return images.clamp(-1, 1)


def confident_fraction(images: torch.Tensor) -> tuple[float, list[int]]:
    """Fraction of images the evaluator classifies with p >= CONFIDENCE_THRESHOLD, and the class counts."""
    labels, confidence = load_evaluator().predict(images)
    return (confidence >= CONFIDENCE_THRESHOLD).float().mean().item(), torch.bincount(labels, minlength=10).tolist()


def evaluate(seed: int) -> None:
    unet = load_default_unet()
    heldout_images, _ = load_heldout_digits()
    real_fraction, _ = confident_fraction(heldout_images)
    print(f"real held-out digits: confident {real_fraction:.3f}", flush=True)
    grid = sample_digits(unet, 64, steps=50, seed=seed)
    image_grid(grid, ncols=8, upscale=4).save(default_model_dir() / "samples.png")
    for name, count, steps, sample_seed, ddpm in [
        ("DDIM 20 steps, 64 samples, seed 0 (the test)", 64, 20, 0, False),
        ("DDIM 50 steps, 512 samples", 512, 50, seed + 1, False),
        ("DDPM 1000 steps, 256 samples", 256, 1000, seed + 2, True),
    ]:
        fraction, counts = confident_fraction(sample_digits(unet, count, steps, sample_seed, ddpm))
        print(f"{name}: confident {fraction:.3f}, predicted classes {counts}", flush=True)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    (train_uint8, _), _ = load_digit_split()
    train_images = to_model_range(train_uint8)
    unet = build_unet()
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    noise_scheduler = build_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-4)
    print(f"{sum(p.numel() for p in unet.parameters())} parameters, {len(train_images)} training digits",
          flush=True)

    start = time.perf_counter()
    order = torch.randperm(len(train_images), generator=generator)
    cursor = 0
    running_loss = 0.0
    for step in range(args.steps):
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(train_images), generator=generator), 0
        clean = train_images[order[cursor:cursor + args.batch_size]]
        cursor += args.batch_size
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(clean),), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup_steps)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        update_ema(ema_unet, unet, step, args.ema_decay)
        running_loss += loss.item()
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1}/{args.steps}: loss {running_loss / args.log_every:.4f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            running_loss = 0.0

    output_dir = default_model_dir()
    ema_unet.save_pretrained(output_dir / "unet", safe_serialization=True)
    noise_scheduler.save_config(output_dir)
    print(f"trained {args.steps} steps x batch {args.batch_size} in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training; sample and judge the shipped model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.evaluate_only:
        train(args)
    evaluate(args.seed)


if __name__ == "__main__":
    main()
