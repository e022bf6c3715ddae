#!/usr/bin/env python
"""Middle-layer routing divergence from English vs BELEBELE accuracy across languages (the paper's claim 2).

Measures each language's routing on FLORES passages as analyze_routing.py does (resumable per language, in
--routing-dir, default --out: point it at an analyze_routing output folder to reuse its results), scores
BELEBELE in every language (resumable per language), and correlates the mean divergence over the middle
window with accuracy across the languages other than the reference: Pearson and Spearman r with p-values
and bootstrap intervals over languages. Writes to --out: correlation.{json,csv}, divergence_by_layer.csv and
correlation.png. Languages may be FLORES-200 codes or BELEBELE's short codes (id, zh-s, ...).

With --data organism: the model organism's passages and its arithmetic task (--task organism), its own language
codes, divergence from its base language; --data-dir is the organism folder (default: the --model folder).
"""
from __future__ import annotations

import sys

from routing.eval.tasks import EvalSettings
from routing.pipelines.cli import add_chat_flags, add_flags, new_parser, settings_from, user_errors
from routing.pipelines.correlate import CORRELATE_TASKS, CorrelateConfig, execute, prepare


def build_parser():
    parser = new_parser(__doc__)
    add_flags(parser, CorrelateConfig, "model", "data", "task", "source_dir", "out_dir", "languages", "reference",
              "routing_dir", "window", "window_fraction", "window_margin", choices={"task": CORRELATE_TASKS},
              task="the task scored in each language (default: belebele; organism with --data organism)",
              source_dir="folder laid out like shared/data (flores200/, belebele/); with --data organism, the "
                         "organism folder (default: the --model folder)",
              languages="comma-separated languages (default: every language of the task in --data-dir); the "
                        "reference is always added",
              window="middle window FIRST:LAST (MoE layers, 0-indexed, inclusive; default: selected from the "
                     "mean divergence curve as analyze_routing does)")
    add_chat_flags(parser, "passages and BELEBELE prompts as a user turn of the chat template")
    add_flags(parser, CorrelateConfig, "chat_template", "tokenizer", "max_passages")
    add_flags(parser, EvalSettings, "limit", "options", "max_new_tokens", limit="task items per language (default: "
              "all)", options="BELEBELE: score the option letter or the option text",
              max_new_tokens="organism: tokens generated")
    add_flags(parser, CorrelateConfig, "batch_size", "max_length", "truncation", "seed", "n_boot", "dtype",
              "tfds_dir", "restart", "progress", seed="consistency pairs and bootstrap")
    return parser


def _interval(ci: list) -> str:
    return "n/a" if None in ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        settings = settings_from(EvalSettings, args)
        prepared = prepare(settings_from(CorrelateConfig, args, eval=settings))
    record = execute(prepared)
    confidence = f"{100 * record['bootstrap']['confidence']:g}%"
    print(f"{record['n']} languages, {record['measure']} vs {record['accuracy_measure']}:")
    for name, key, value in (("Pearson r", "pearson", "pearson_r"), ("Spearman rho", "spearman", "spearman_rho")):
        p = record[f"{key}_p"]
        print(f"  {name} = {'n/a' if record[value] is None else f'{record[value]:+.3f}'}, {confidence} bootstrap "
              f"CI {_interval(record[f'{key}_ci'])}, p = {'n/a' if p is None else f'{p:.3g}'}")
    print(f"wrote {args.out_dir / 'correlation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
