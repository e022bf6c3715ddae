#!/usr/bin/env python
"""The main job: the whole routing pipeline on the built-in synthetic multilingual MoE model organism.

Generates the corpus, trains the organism (or reuses the cached one), measures routing divergence over depth,
finds task experts, steers them, runs routing-aware finetuning, and writes tables and figures to --out. The
report is built beside --out and swapped in whole at the end, replacing an earlier report in that folder.
No downloads; seeded and reproducible.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from routing.organism.demo import QUICK, DemoSettings, check_report_folder, run_demo
from routing.organism.model import OrganismSettings
from routing.outputs.cache import default_cache_dir
from routing.pipelines.cli import add_flags, new_parser, user_errors
from routing.window import Window


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="report folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a much smaller organism and run (a smoke test, about 1 min)")
    add_flags(parser, OrganismSettings, "seed", seed="seed of the corpus, the model and the controls")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache folder for trained organisms "
                             f"(default: $MOE_ROUTING_CACHE, else moe-routing in $XDG_CACHE_HOME or ~/.cache: "
                             f"{default_cache_dir()})")
    add_flags(parser, DemoSettings, "window", "lam", window="middle window FIRST:LAST (MoE layers, 0-indexed, "
              "inclusive; default: the valley of the measured divergence curve)", lam="soft steering strength")
    parser.add_argument("--no-finetune", action="store_true", help="skip routing-aware finetuning")
    add_flags(parser, run_demo, "progress")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else DemoSettings()
    changes = {"organism": dataclasses.replace(settings.organism, seed=args.seed)}
    with user_errors(parser):
        if args.window is not None:
            changes["window"] = Window.parse(args.window).check(settings.organism.num_layers)
        changes["lam"] = args.lam
        if args.no_finetune:
            changes["finetune_steps"] = 0
        settings = dataclasses.replace(settings, **changes)
        check_report_folder(args.out, args.cache)
    run_demo(args.out, settings, args.cache, progress=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
