#!/usr/bin/env python
"""Task experts (English task data vs English FLORES) and optional language experts of an MoE model.

Writes to --out: experts.json (selected [moe_layer, expert] pairs, settings, Delta tables per MoE layer and
expert, overlap of language and task sets) and delta_task.png (+ delta_{language}.png) heatmaps. Layers are
MoE-layer indices, 0-indexed; --window FIRST:LAST is inclusive (the paper's 1-indexed Qwen3 window 8-35 is 7:34).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from routing.cli import user_errors
from routing.expert_search import EXPERT_TASKS, ExpertSettings, run_expert_search
from routing.model_io import DTYPES, peek_config
from routing.report import parse_window


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF checkpoint folder, converted folder or hub id")
    parser.add_argument("--data-dir", type=Path, help="folder laid out like shared/data (default: download)")
    parser.add_argument("--task", required=True, choices=EXPERT_TASKS,
                        help="mgsm: GSM8K train as task data; medical: MedInstruct")
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--tau", type=float, help="select experts with Delta > tau")
    rule.add_argument("--top-n", type=int, help="select the N experts with the largest Delta in the window")
    parser.add_argument("--window", required=True, help="FIRST:LAST MoE layers (0-indexed, inclusive)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--langs", default="", help="comma-separated languages for language experts (optional)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=True,
                      help="task data as user/assistant turns, passages as user turns, through the chat template "
                           "(default)")
    mode.add_argument("--plain", dest="chat", action="store_false", help="plain text")
    parser.add_argument("--chat-template", type=Path, help="Jinja chat template file replacing the tokenizer's")
    parser.add_argument("--tokenizer", help="tokenizer.json file or folder (default: the model folder)")
    parser.add_argument("--num-samples", type=int, default=500, help="task samples (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-passages", type=int, help="first N FLORES passages per language (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048, help="longer sequences keep their start")
    parser.add_argument("--tfds-dir", type=Path, help="where TFDS keeps prepared data (default: its own)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        _, config = peek_config(args.model)
        settings = ExpertSettings(
            task=args.task, window=parse_window(args.window, config.num_moe_layers), tau=args.tau, top_n=args.top_n,
            languages=tuple(code.strip() for code in args.langs.split(",") if code.strip()), chat=args.chat,
            chat_template=args.chat_template.read_text() if args.chat_template else None,
            num_samples=args.num_samples, seed=args.seed, max_passages=args.max_passages,
            batch_size=args.batch_size, max_length=args.max_length)
        settings.check(config)
        with tqdm(desc="sequences", unit="seq") as bar:
            sets, paths = run_expert_search(args.model, settings, args.out, source_dir=args.data_dir,
                                            data_dir=args.tfds_dir, tokenizer=args.tokenizer, dtype=args.dtype,
                                            progress=bar.update)
    print(f"{len(sets.task_experts)} task experts in MoE layers {settings.window[0]}-{settings.window[1]}"
          + "".join(f"; {lang}: {len(p)} language experts" for lang, p in sets.language_experts.items()))
    if not sets.task_experts:
        print("warning: no expert passes the threshold; lower --tau or use --top-n", file=sys.stderr)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
