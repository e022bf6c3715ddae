#!/usr/bin/env python
"""Reproduce one row of the paper's results table from a recipe (scripts/recipes/*.json), end to end.

Loads the model once, finds task (and language) experts, runs baseline and steered evaluations, then each
control, and writes to --out: experts/, steered/, control-{name}/ (the outputs of find_experts.py and
steer_eval.py) and summary.json (pooled accuracies next to the paper's numbers). Needs the real checkpoint
(a hub id is downloaded) and hardware to match; the options below override the recipe for smaller runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from routing.cli import user_errors
from routing.recipes import load_recipe, reproduce


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path, help="recipe JSON file")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--data-dir", type=Path, help="folder laid out like shared/data (default: download)")
    parser.add_argument("--tfds-dir", type=Path, help="where TFDS keeps prepared data (default: its own)")
    parser.add_argument("--model", help="model folder or hub id replacing the recipe's")
    parser.add_argument("--plain", action="store_true", help="plain prompts instead of the chat template")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="replaces the recipe's dtype")
    parser.add_argument("--limit", type=int, help="items per language")
    parser.add_argument("--max-new-tokens", type=int, help="mgsm: tokens generated")
    parser.add_argument("--chat-date", help="the date chat templates see, YYYY-MM-DD (replaces the recipe's)")
    parser.add_argument("--reasoning-effort", help="passed to the chat template (replaces the recipe's)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size")
    parser.add_argument("--num-samples", type=int, help="task samples for the expert search")
    parser.add_argument("--max-passages", type=int, help="FLORES passages per language (experts, divergence)")
    return parser


def _given(**options: object) -> dict[str, object]:
    return {key: value for key, value in options.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        recipe = load_recipe(args.recipe, model=args.model, dtype=args.dtype, chat=False if args.plain else None)
        summary = reproduce(recipe, args.out, source_dir=args.data_dir, tfds_dir=args.tfds_dir,
                            eval_overrides=_given(limit=args.limit, max_new_tokens=args.max_new_tokens,
                                                  batch_size=args.batch_size, chat_date=args.chat_date,
                                                  reasoning_effort=args.reasoning_effort),
                            search_overrides=_given(num_samples=args.num_samples, max_passages=args.max_passages))
    steered, paper = summary["steered"], summary["paper"]
    print(f"{recipe.name}: {summary['experts_found']} experts (paper {summary['experts_paper']}); accuracy "
          f"{100 * steered['base_accuracy']:.1f} -> {100 * steered['steer_accuracy']:.1f} "
          f"(paper {paper.get('baseline')} -> {paper.get('steered')})")
    for control, row in summary["controls"].items():
        print(f"  control {control}: {100 * row['base_accuracy']:.1f} -> {100 * row['steer_accuracy']:.1f}")
    print(f"wrote {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
