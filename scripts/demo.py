#!/usr/bin/env python
"""The main job: the whole routing pipeline on the built-in synthetic multilingual MoE model organism.

Generates the corpus, trains the organism (or reuses the cached one), measures routing divergence over depth,
finds task experts, steers them, runs routing-aware finetuning, and writes tables and figures to --out. The
report is built beside --out and swapped in whole at the end, replacing an earlier report in that folder.
No downloads; seeded and reproducible.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from routing.cli import user_errors
from routing.demo import QUICK, DemoSettings, check_report_folder, run_demo
from routing.cache import default_cache_dir
from routing.report import parse_window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="report folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a much smaller organism and run (a smoke test, about 1 min)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, the model and the controls")
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache folder for trained organisms "
                             f"(default: $MOE_ROUTING_CACHE or {default_cache_dir()})")
    parser.add_argument("--window", default=None, help="middle window FIRST:LAST (MoE layers, 0-indexed, inclusive); "
                                                       "default: the valley of the measured divergence curve")
    parser.add_argument("--lam", type=float, default=None, help="soft steering strength (default 0.5)")
    parser.add_argument("--no-finetune", action="store_true", help="skip routing-aware finetuning")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    settings = QUICK if args.quick else DemoSettings()
    changes = {"organism": dataclasses.replace(settings.organism, seed=args.seed)}
    with user_errors(parser):
        if args.window is not None:
            changes["window"] = parse_window(args.window, settings.organism.num_layers)
        if args.lam is not None:
            changes["lam"] = args.lam
        if args.no_finetune:
            changes["finetune_steps"] = 0
        settings = dataclasses.replace(settings, **changes)
        check_report_folder(args.out, args.cache)
    run_demo(args.out, settings, args.cache, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
