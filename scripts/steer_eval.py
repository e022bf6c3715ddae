#!/usr/bin/env python
"""Baseline vs steered accuracy of an MoE model on the same items, per language, with a paired test.

Steers the experts of --experts (find_experts.py's experts.json, or a JSON list of [moe_layer, expert]) inside
--window (MoE layers, 0-indexed, inclusive; default: the expert file's window) in every language.
--control replaces the steered experts by a control set of the same size (outside-window, language-experts,
random). Writes to --out: results.{json,csv} (accuracy, Wilson CIs, McNemar p-value, paired bootstrap CI of the
difference, per language and pooled), items.jsonl, steer_eval.png, config.json (the exact configuration), and
correlation.{json,png} (middle-layer divergence vs baseline accuracy, Pearson and Spearman with p-values and
bootstrap intervals over languages) when at least three languages other than English are evaluated. For BELEBELE
across all its languages, see correlate.py. --task organism evaluates the model organism (its own language codes,
its prompt "{question} <answer>"; --data-dir is the organism folder, default the --model folder).
"""
from __future__ import annotations

import sys

from routing.eval.tasks import EvalSettings
from routing.pipelines.cli import add_chat_flags, add_flags, new_parser, settings_from, user_errors
from routing.pipelines.steer_eval import DEFAULT_LAM, SteerEvalConfig, execute, prepare


def build_parser():
    parser = new_parser(__doc__)
    add_flags(parser, SteerEvalConfig, "model", "task", "experts", "mode", "lam", "eps", "eps_std", "window",
              "languages", "out_dir", "control", "source_dir", "tfds_dir", "tokenizer",
              lam=f"soft steering strength (default {DEFAULT_LAM}); soft mode only",
              window="FIRST:LAST MoE layers, 0-indexed, inclusive (default: the expert file's)",
              source_dir="folder laid out like shared/data (default: download); the organism folder for --task "
                         "organism (default: the --model folder)")
    add_chat_flags(parser, "prompts as a user turn of the chat template")
    add_flags(parser, EvalSettings, "chat_template", "chat_date", "reasoning_effort", "instruction", "template", "stop",
              "answer_format", "limit", "batch_size", "max_length", "truncation", "buckets", "max_new_tokens", "shots",
              "shot_source", "options", "length_normalized",
              truncation="prompts longer than the longest bucket: error, or keep their start or end")
    add_flags(parser, SteerEvalConfig, "seed", "n_boot", "divergence", "correlation", "max_passages", "dtype",
              "progress", seed="random control, exemplars, bootstrap, hard-steering draws",
              max_passages="FLORES passages per language for computed divergence (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        prepared = prepare(settings_from(SteerEvalConfig, args, eval=settings_from(EvalSettings, args)))
    summary = execute(prepared)
    for row in summary["table"]:
        print(f"{row['language']:>9}  n={row['n']:<4} baseline {row['base_accuracy']:.3f}  steered "
              f"{row['steer_accuracy']:.3f}  diff {row['difference']:+.3f} "
              f"[{row['difference_ci_low']:+.3f}, {row['difference_ci_high']:+.3f}]  McNemar p={row['mcnemar_p']:.3g}"
              + (f"  unanswered {row['base_unanswered']}/{row['steer_unanswered']}"
                 if row["base_unanswered"] or row["steer_unanswered"] else ""))
    print(f"wrote results to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
