#!/usr/bin/env python
"""The main job: the paper's claims tested on the built-in model organism, through the same pipelines as a real
model (analyze_routing, correlate, find_experts, steer_eval, routing-aware finetuning).

The organism is shipped inside the package (`moe.from_pretrained("organism")`); its synthetic data is generated
from its folder. No downloads. Writes every pipeline's outputs under --out and summary.md / summary.json with a
verdict per claim (its test, interval and p-value). The report is built beside --out and swapped in whole.
--retrain first trains an organism with --seed (scripts/train_organism.py) into --model, or into the cache.
"""
from __future__ import annotations

import sys
from pathlib import Path

from routing.outputs.cache import default_cache_dir
from routing.pipelines.cli import new_parser, user_errors
from routing.pipelines.demo import DemoSettings, check_demo, read_report, run_demo, seeds_table


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="report folder (default: runs/demo)")
    parser.add_argument("--model", type=Path, default=None,
                        help="an organism folder (default: the built-in organism)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the controls, bootstraps and --retrain")
    parser.add_argument("--window", default=None, help="middle window FIRST:LAST (MoE layers, 0-indexed, inclusive; "
                        "default: the valley of the measured divergence curve)")
    parser.add_argument("--limit", type=int, default=None, help="task items per language (default: all)")
    parser.add_argument("--no-finetune", action="store_true", help="skip routing-aware finetuning")
    parser.add_argument("--retrain", action="store_true",
                        help="train the organism first (about as long as scripts/train_organism.py)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--table", type=Path, nargs="+", metavar="REPORT",
                        help="print the claims of these demo reports (e.g. one per training seed) as a Markdown "
                             "table, and run nothing")
    args = parser.parse_args(argv)
    if args.table:
        with user_errors(parser):
            print(seeds_table([read_report(folder) for folder in args.table]), end="")
        return 0

    with user_errors(parser):
        model = args.model
        if args.retrain and model is None:
            model = default_cache_dir() / "organisms" / f"seed{args.seed}"
        settings = DemoSettings(model=None if model is None else str(model), seed=args.seed, window=args.window,
                                limit=args.limit, **({"finetune_steps": 0} if args.no_finetune else {}))
        if args.retrain:
            retrain(model, args.seed, progress=not args.quiet)
        check_demo(args.out, settings)
    run_demo(args.out, settings, progress=not args.quiet)
    return 0


def retrain(folder: Path, seed: int, progress: bool) -> None:
    """Train the organism of ``seed`` into ``folder`` (replacing it), as scripts/train_organism.py does."""
    from routing.organism.release import default_work_dir, train_organism
    from routing.organism.synthetic import default_spec
    from routing.organism.train import TrainSettings
    spec, settings = default_spec(seed), TrainSettings(seed=seed)
    train_organism(spec, settings, folder, work=default_work_dir(spec, settings), overwrite=True, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
