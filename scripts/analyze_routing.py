#!/usr/bin/env python
"""Routing divergence of parallel FLORES passages from a reference language, per MoE layer (the paper's Figure 1);
with --data organism, of the model organism's parallel passages from its base language.

Writes to --out: routing_table.{json,csv} (per-layer, per-language divergence, raw JSD, entropy, consistency),
middle_window.json (0-indexed, inclusive, in MoE-layer and decoder-layer indices), divergence_by_layer.png,
expert_usage.png, and languages/{code}.npz (per-language results, saved as each completes). Rerunning with the
same settings resumes: finished languages are reused; results computed under other settings are refused
unless --restart. Layer indices on the command line are MoE-layer indices, 0-indexed.
"""
from __future__ import annotations

import sys

from routing.pipelines.analyze_routing import AnalysisConfig, execute, prepare
from routing.pipelines.cli import add_chat_flags, add_flags, new_parser, settings_from, user_errors


def build_parser():
    parser = new_parser(__doc__)
    add_flags(parser, AnalysisConfig, "model", "data", "source_dir", "out_dir", "languages", "reference",
              source_dir="folder laid out like shared/data (flores200/devtest/*.devtest, metadata_devtest.tsv); "
                         "with --data organism, the organism folder (default: the --model folder)",
              languages="comma-separated FLORES-200 codes (default: the paper's 15 languages present in "
                        "--data-dir; every organism language with --data organism); the reference is always added")
    add_chat_flags(parser, "each passage as one user turn through the chat template")
    add_flags(parser, AnalysisConfig, "chat_template", "tokenizer", "max_passages", "batch_size", "max_length",
              "truncation", "num_pairs", "seed", "dtype", "window", "window_fraction", "window_margin",
              "heatmap_layers", "tfds_dir", "restart", "progress",
              seed="seed of the consistency pairs", window="override the middle window: FIRST:LAST MoE layers, "
                                                           "0-indexed, inclusive")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        prepared = prepare(settings_from(AnalysisConfig, args))
    for path in execute(prepared).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
