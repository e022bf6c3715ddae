#!/usr/bin/env python
"""Train the model organism and write its HF folder (config.json, model.safetensors, tokenizer files,
organism.json with the data spec, the training settings and the held-out metrics).

The data is `routing.organism.synthetic.default_spec(seed)`; the model and optimiser are
`routing.organism.train.TrainSettings` (seed, steps and the training step's dispatch from the flags). Training
is deterministic and resumable: rerun the same command after an interruption and it continues from the last
checkpoint in the work folder.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import moe
from routing.organism.release import train_organism
from routing.organism.synthetic import default_spec
from routing.organism.train import TRAINING_DISPATCH, TrainSettings
from routing.pipelines.cli import new_parser, user_errors

PACKAGE_FOLDER = Path(moe.__file__).parent / "organism"


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--seed", type=_natural, default=0, help="data and training seed (default: 0)")
    parser.add_argument("--out", type=Path, default=PACKAGE_FOLDER,
                        help=f"organism folder to write (default: the package's {PACKAGE_FOLDER})")
    parser.add_argument("--steps", type=_natural, default=TrainSettings.steps,
                        help=f"training steps (default: {TrainSettings.steps})")
    parser.add_argument("--dispatch", choices=TRAINING_DISPATCH, default=TrainSettings.dispatch,
                        help=f"the training step's expert dispatch (default: {TrainSettings.dispatch}, as the shipped "
                             "organism was trained; paths round differently, so the weights depend on it)")
    parser.add_argument("--work", type=Path, default=None,
                        help="checkpoint folder to resume from (default: one per run under the cache folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing organism folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with user_errors(parser):
        spec = default_spec(args.seed)
        settings = TrainSettings(seed=args.seed, steps=args.steps, dispatch=args.dispatch,
                                 warmup_steps=min(TrainSettings.warmup_steps, max(args.steps - 1, 0)))
        record = train_organism(spec, settings, args.out, work=args.work,
                                overwrite=args.overwrite, progress=not args.quiet)
    for code, acc in record["metrics"]["task_accuracy"].items():
        curve = record["metrics"]["divergence_from_base"].get(code)
        shown = " ".join(f"{x:.3f}" for x in curve) if curve else "(reference)"
        print(f"{code:>10}: accuracy {100 * acc['accuracy']:5.1f}% (n={acc['n']})  divergence {shown}")
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s ({settings.steps} steps, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
