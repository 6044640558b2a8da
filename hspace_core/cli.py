"""The command line: ``hspace demo`` (also ``python -m hspace_core demo``)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hspace", description="Semantic editing in the h-space of diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="discover and apply h-space directions end to end, writing a report")
    demo.add_argument("--samples", type=int, default=256, help="generated samples captured for PCA (default 256)")
    demo.add_argument("--steps", type=int, default=20, help="DDIM steps for capture, inversion and editing")
    demo.add_argument("--out", type=Path, default=Path("hspace_report"), help="report folder")
    demo.add_argument("--model", type=Path, default=None,
                      help="a diffusers pixel-DDPM folder (unet/ + scheduler_config.json) instead of the embedded model")
    demo.add_argument("--real-digits", type=int, default=500, help="held-out real digits to invert and edit")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from .demo import DemoConfig, run_demo
    from .errors import HSpaceError

    try:
        run_demo(DemoConfig(samples=args.samples, steps=args.steps, out=args.out, model=args.model,
                            real_digits=args.real_digits, seed=args.seed))
    except HSpaceError as err:
        parser.exit(2, f"hspace: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "hspace: interrupted\n")
    return 0
