#!/usr/bin/env python
"""Reproduce one row of the paper's results table from a recipe (scripts/recipes/*.json), end to end.

Loads the model once, finds task (and language) experts, runs baseline and steered evaluations, then each
control, and writes to --out: experts/, steered/, control-{name}/ (the outputs of find_experts.py and
steer_eval.py) and summary.json (pooled accuracies next to the paper's numbers, and every override given
here). Needs the real checkpoint (a hub id is downloaded) and hardware to match; the options below override
the recipe (its window, languages, sample sizes, ...) for smaller runs.
"""
from __future__ import annotations

import sys
from pathlib import Path

from routing.pipelines.cli import add_flags, add_overrides, new_parser, user_errors
from routing.pipelines.reproduce import load_recipe, reproduce

RECIPE = ("model", "dtype", "window", "languages")  # top-level recipe fields
EVAL = ("limit", "max_new_tokens", "batch_size", "chat_date", "reasoning_effort")  # EvalSettings overrides
SEARCH = ("num_samples", "max_passages")  # ExpertSettings overrides


def build_parser():
    parser = new_parser(__doc__)
    parser.add_argument("recipe", type=Path, help="recipe JSON file")
    add_flags(parser, reproduce, "out_dir", "source_dir", "tfds_dir",
              source_dir="folder laid out like shared/data (default: download)")
    add_overrides(parser, *RECIPE, *EVAL, *SEARCH, batch_size="evaluation batch size",
                  window="FIRST:LAST MoE layers, 0-indexed, inclusive", languages="comma-separated languages",
                  num_samples="task samples for the expert search",
                  max_passages="FLORES passages per language (experts, divergence)")
    parser.add_argument("--plain", dest="chat", action="store_const", const=False,
                        help="plain prompts instead of the chat template (replaces the recipe's)")
    return parser


def _given(args, names: tuple[str, ...]) -> dict[str, object]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        overrides = _given(args, (*RECIPE, "chat"))
        recipe = load_recipe(args.recipe, **overrides)
        summary = reproduce(recipe, args.out_dir, source_dir=args.source_dir, tfds_dir=args.tfds_dir,
                            eval_overrides=_given(args, EVAL), search_overrides=_given(args, SEARCH),
                            recipe_overrides=overrides)
    steered, paper = summary["steered"], summary["paper"]
    print(f"{recipe.name}: {summary['experts_found']} experts (paper {summary['experts_paper']}); accuracy "
          f"{100 * steered['base_accuracy']:.1f} -> {100 * steered['steer_accuracy']:.1f} "
          f"(paper {paper.get('baseline')} -> {paper.get('steered')})")
    for control, row in summary["controls"].items():
        print(f"  control {control}: {100 * row['base_accuracy']:.1f} -> {100 * row['steer_accuracy']:.1f}")
    print(f"wrote {args.out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
