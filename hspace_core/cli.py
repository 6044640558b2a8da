"""The command line: ``hspace demo`` and ``hspace evaluate`` (also ``python -m hspace_core ...``)."""
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
    demo.add_argument("--model", default=None,
                      help="unet (the embedded UNet, default), dit (the embedded flow-matching DiT), or a diffusers "
                           "pixel-DDPM folder (unet/ + scheduler_config.json; ./dit for a folder named dit)")
    demo.add_argument("--real-digits", type=int, default=500, help="held-out real digits to invert and edit")
    demo.add_argument("--seed", type=int, default=0)
    evaluate = commands.add_parser("evaluate", help="measure what a direction changes: its target attribute, the "
                                                    "others and the class (JSON + PNG chart)")
    evaluate.add_argument("direction", type=Path, help="a direction file (.safetensors) made for the model")
    evaluate.add_argument("--target", required=True, help="the attribute the direction should move: one of "
                                                          "slant, thickness, vertical_centre, horizontal_centre, "
                                                          "aspect, ink")
    evaluate.add_argument("--samples", type=int, default=128, help="held-out samples edited (default 128)")
    evaluate.add_argument("--first-seed", type=int, default=100000,
                          help="seeds first-seed.. are edited: keep them apart from the seeds the direction was "
                               "fitted on (default 100000)")
    evaluate.add_argument("--strengths", type=float, nargs="+", default=[-2.0, -1.0, 1.0, 2.0])
    evaluate.add_argument("--random-directions", type=int, default=2)
    evaluate.add_argument("--steps", type=int, default=20)
    evaluate.add_argument("--t-edit", type=float, default=None, help="edit the steps with t >= this (default: "
                                                                     "the direction's own window, or all)")
    evaluate.add_argument("--model", default=None, help="unet (default) or dit, the embedded models the direction "
                                                        "was made for, or a diffusers pixel-DDPM folder (no class "
                                                        "figures then)")
    evaluate.add_argument("--keep-class", action="store_true",
                          help="edit with the class-keeping correction: at every edited step each sample's shift loses "
                               "the part that would lower the shipped classifier's probability of its class")
    evaluate.add_argument("--out", type=Path, default=Path("hspace_evaluation"), help="output folder")
    args = parser.parse_args(argv)

    from .errors import HSpaceError

    try:
        if args.command == "evaluate":
            _evaluate(args)
            return 0
        from .demo import DemoConfig, run_demo

        run_demo(DemoConfig(samples=args.samples, steps=args.steps, out=args.out, model=args.model,
                            real_digits=args.real_digits, seed=args.seed))
    except HSpaceError as err:
        parser.exit(2, f"hspace: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "hspace: interrupted\n")
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    """``hspace evaluate``: the direction's figures on held-out seeds, as evaluation.json and evaluation.png."""
    from .demo import check_out_folder
    from .errors import HSpaceError
    from .evaluation import ATTRIBUTES, evaluate_on_model
    from .fileio import load_direction

    if args.target not in ATTRIBUTES:
        raise HSpaceError(f"--target: one of {', '.join(ATTRIBUTES)} expected, got {args.target!r}")
    check_out_folder(args.out)
    if not args.direction.is_file():
        raise HSpaceError(f"direction: a direction file expected, got {args.direction} (no such file)")
    result = evaluate_on_model(load_direction(args.direction), args.target, args.model, args.samples,
                               args.first_seed, args.steps, args.strengths, args.random_directions, args.t_edit,
                               keep_class=args.keep_class)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(result.to_json())
    result.chart().save(args.out / "evaluation.png")
    print(result.report())
    print(f"written to {args.out}/ (evaluation.json, evaluation.png)")
