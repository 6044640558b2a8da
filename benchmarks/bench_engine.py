"""Cost of Asyrp editing relative to plain DDIM, measured in one run on one model.

Prints the median wall time over repeats of: plain DDIM (no controller attached: plain sampling); Asyrp
with the edit window over the first half of the steps, the shifted and unshifted predictions from one
batched call (the UNet's encoder runs once) or from two sequential calls. Ratios are against plain DDIM.
The runs take turns within each repeat, so load from other processes hits all alike. Finally it checks
that an edit of strength 0 reproduces plain DDIM bitwise on both paths.

    python benchmarks/bench_engine.py [--model embedded|celeba-like] [--steps 40] [--batch 4] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hspace_core.bottleneck import Bottleneck, EditSpec
from hspace_core.denoisers import DiffusersDenoiser
from hspace_core.direction import Direction
from hspace_core.samplers import sample_asyrp, sample_ddim
from hspace_core.schedule import VPSchedule, asyrp_timesteps


def build(model: str, device: str) -> DiffusersDenoiser:
    from diffusers import UNet2DModel

    if model == "embedded":
        from hspace_core.embedded import load_default_unet

        unet = load_default_unet()
    else:  # the CelebA-HQ DDPM topology at a CPU-friendly width and size
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(32, 32, 64, 64, 128),
                           layers_per_block=2, down_block_types=("DownBlock2D",) * 3 + ("AttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 3).eval()
    return DiffusersDenoiser(unet.to(device), VPSchedule.linear())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["embedded", "celeba-like"], default="celeba-like")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    model = build(args.model, args.device)
    schedule = model.schedule
    timesteps = asyrp_timesteps(args.steps)
    sigmas = schedule.sigmas_for(timesteps)
    sigma_edit = float(schedule.sigma(timesteps[args.steps // 2 - 1]))  # first half of the steps edited
    size = model.unet.config.sample_size
    x = torch.randn(args.batch, model.unet.config.in_channels, size, size, device=args.device) * float(sigmas[0])
    direction = Direction(torch.randn(model.h_shape()))
    controller = Bottleneck([EditSpec(direction, 1.0)])

    def edited(batched: bool, bottleneck: Bottleneck = controller) -> torch.Tensor:
        with model.attached(bottleneck):
            return sample_asyrp(model, x, sigmas, sigma_edit=sigma_edit, batched=batched, disable=True,
                                shifts=lambda s: bottleneck.shifts_at(float(schedule.timestep(s))))

    runs = {
        "plain DDIM": lambda: sample_ddim(model, x, sigmas, disable=True),
        "Asyrp, one call, encoder shared": lambda: edited(True),
        "Asyrp, two sequential calls": lambda: edited(False),
    }
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain DDIM"])
    print(f"model={args.model} device={args.device} threads={torch.get_num_threads()} steps={args.steps} "
          f"batch={args.batch} repeats={args.repeats}; edit window = first {args.steps // 2} steps")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:34s} {median:8.3f} s   ratio to plain DDIM {median / base:5.2f}")
    plain = runs["plain DDIM"]()
    zero = Bottleneck([EditSpec(direction, 0.0)])
    for batched in (True, False):
        same = torch.equal(edited(batched, zero), plain)
        print(f"strength 0, {'batched' if batched else 'sequential'}: bitwise equal to plain DDIM: {same}")


if __name__ == "__main__":
    main()
