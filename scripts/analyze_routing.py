#!/usr/bin/env python
"""Routing divergence of parallel FLORES passages from a reference language, per MoE layer (the paper's Figure 1).

Writes to --out: routing_table.{json,csv} (per-layer, per-language divergence, raw JSD, entropy, consistency),
middle_window.json (0-indexed, inclusive, in MoE-layer and decoder-layer indices), divergence_by_layer.png,
expert_usage.png, and languages/{code}.npz (per-language results, saved as each completes). Rerunning with the
same settings resumes: finished languages are reused; results computed under other settings are refused
unless --restart. Layer indices on the command line are MoE-layer indices, 0-indexed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _codes(text: str) -> list[str]:
    return [code.strip() for code in text.split(",") if code.strip()]


def _layers(text: str) -> list[int]:
    return [int(layer) for layer in _codes(text)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF checkpoint folder, converted folder or hub id")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="folder laid out like shared/data (flores200/devtest/*.devtest, metadata_devtest.tsv)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--langs", type=_codes, default=None,
                        help="comma-separated FLORES-200 codes (default: the paper's 15 languages present in "
                             "--data-dir); the reference is always added")
    parser.add_argument("--reference", default="eng_Latn", help="reference language (default: eng_Latn)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=True,
                      help="each passage as one user turn through the chat template (default)")
    mode.add_argument("--plain", dest="chat", action="store_false", help="passages as plain text")
    parser.add_argument("--chat-template", type=Path, help="Jinja chat template file replacing the tokenizer's")
    parser.add_argument("--tokenizer", help="tokenizer.json file or folder (default: the model folder)")
    parser.add_argument("--max-passages", type=int, help="first N passages per language (default: all 281)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=4096, help="longest sequence (tokens); default 4096")
    parser.add_argument("--truncate", choices=("error", "keep_start", "keep_end"), default="error",
                        help="what to do with longer passages (default: error)")
    parser.add_argument("--consistency-pairs", type=int, default=64, help="token pairs sampled per passage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the consistency pairs")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--window", help="override the middle window: FIRST:LAST MoE layers, inclusive")
    parser.add_argument("--window-fraction", type=float, default=0.25,
                        help="selection rule: layers within this fraction of the mean curve's range above "
                             "its minimum, contiguous around it (default 0.25)")
    parser.add_argument("--window-margin", type=int, default=0, help="shrink the selected window by this "
                                                                      "many layers on each side")
    parser.add_argument("--heatmap-layers", type=_layers,
                        help="comma-separated MoE layers for expert_usage.png (default: first, window centre, last)")
    parser.add_argument("--tfds-dir", type=Path, help="where TFDS prepares the data (default: TFDS's own)")
    parser.add_argument("--restart", action="store_true", help="discard stored per-language results")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from routing.cli import user_errors
    from routing.pipeline import AnalysisConfig, execute, prepare  # after parsing, so --help stays fast

    with user_errors(parser):
        chat_template = args.chat_template.read_text(encoding="utf-8") if args.chat_template else None
        prepared = prepare(AnalysisConfig(
            model=args.model, data_dir=args.data_dir, out_dir=args.out, languages=args.langs,
            reference=args.reference, tokenizer=args.tokenizer, chat=args.chat, chat_template=chat_template,
            max_passages=args.max_passages, batch_size=args.batch_size, max_length=args.max_length,
            truncation=args.truncate, num_pairs=args.consistency_pairs, seed=args.seed, dtype=args.dtype,
            window=args.window, window_fraction=args.window_fraction, window_margin=args.window_margin,
            heatmap_layers=args.heatmap_layers, tfds_dir=args.tfds_dir, restart=args.restart,
            progress=args.progress))
    paths = execute(prepared)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
