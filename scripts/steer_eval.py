#!/usr/bin/env python
"""Baseline vs steered accuracy of an MoE model on the same items, per language, with a paired test.

Steers the experts of --experts (find_experts.py's experts.json, or a JSON list of [moe_layer, expert]) inside
--window (MoE layers, 0-indexed, inclusive; default: the expert file's window) in every language.
--control replaces the steered experts by a control set of the same size (outside-window, language-experts,
random). Writes to --out: results.{json,csv} (accuracy, Wilson CIs, McNemar p-value, paired bootstrap CI of the
difference, per language and pooled), items.jsonl, steer_eval.png, config.json (the exact configuration), and
correlation.{json,png} (middle-layer divergence vs baseline accuracy, Pearson and Spearman with p-values and
bootstrap intervals over languages) when at least three languages other than English are evaluated. For BELEBELE
across all its languages, see correlate.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from routing.data import DEFAULT_CHAT_DATE
from routing.mgsm import ANSWER_FORMATS, DEFAULT_TEMPLATE
from routing.cli import user_errors
from routing.model_io import DTYPES
from routing.steer_pipeline import SteerEvalConfig, execute, prepare
from routing.steering_eval import CONTROLS, MODES
from routing.tasks import SHOT_SOURCES, TASKS, EvalSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF checkpoint folder, converted folder or hub id")
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--experts", required=True, type=Path, help="expert file (experts.json or a JSON list)")
    parser.add_argument("--mode", default="soft", help=f"one of {', '.join(MODES)} (default soft)")
    parser.add_argument("--lam", type=float, help="soft steering strength (default 0.5); soft mode only")
    parser.add_argument("--eps", type=float, default=0.01,
                        help="hard steering: fixed offset past max/min (default 0.01, SteerMoE's)")
    parser.add_argument("--eps-std", type=float, default=0.0,
                        help="hard steering: add eps_std * N(0, 1) per token and expert, seeded by --seed "
                             "(the paper's eps ~ N(0, 1e-6): --eps 0 --eps-std 1e-6)")
    parser.add_argument("--window", help="FIRST:LAST MoE layers, 0-indexed, inclusive (default: the expert file's)")
    parser.add_argument("--langs", required=True, help="comma-separated languages (FLORES or short codes)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--control", help=f"one of {', '.join(CONTROLS)}")
    parser.add_argument("--data-dir", type=Path, help="folder laid out like shared/data (default: download)")
    parser.add_argument("--tfds-dir", type=Path, help="where TFDS keeps prepared data (default: its own)")
    parser.add_argument("--tokenizer", help="tokenizer.json file or folder (default: the model folder)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=True,
                      help="prompts as a user turn of the chat template (default)")
    mode.add_argument("--plain", dest="chat", action="store_false", help="plain-text prompts")
    parser.add_argument("--chat-template", type=Path, help="Jinja chat template file replacing the tokenizer's")
    parser.add_argument("--chat-date", default=DEFAULT_CHAT_DATE,
                        help=f"the date chat templates see, YYYY-MM-DD (default {DEFAULT_CHAT_DATE}, fixed)")
    parser.add_argument("--reasoning-effort", help="passed to the chat template (GPT-OSS: low, medium, high; "
                                                   "default: the template's own)")
    parser.add_argument("--instruction", default="", help="text put before every prompt (default none)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE,
                        help=f"mgsm: prompt with {{question}} (default {DEFAULT_TEMPLATE!r})")
    parser.add_argument("--stop", action="append", default=[],
                        help="mgsm: cut the output at this string (repeatable; default: score the whole answer)")
    parser.add_argument("--answer-format", choices=ANSWER_FORMATS, default="auto",
                        help="mgsm: score the whole output (plain), GPT-OSS's final channel (harmony), or decide "
                             "from the chat template (auto, default)")
    parser.add_argument("--limit", type=int, help="items per language (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048, help="longest prompt in tokens (default 2048)")
    parser.add_argument("--truncate", choices=("error", "keep_start", "keep_end"), default="error",
                        help="prompts longer than the longest bucket: error (default) or keep their start/end")
    parser.add_argument("--buckets", help="comma-separated padded prompt lengths (default: powers of two from 32 "
                                          "up to --max-length); each length compiles once")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="mgsm: tokens generated (default 256)")
    parser.add_argument("--shots", type=int, default=0, help="mgsm: exemplars per prompt (default 0)")
    parser.add_argument("--shot-source", choices=SHOT_SOURCES, default="gsm8k", help="mgsm: exemplar source")
    parser.add_argument("--options", choices=("letter", "text"), default="letter",
                        help="multiple choice: score the option letter (default) or the option text")
    parser.add_argument("--length-normalized", action="store_true", help="multiple choice: mean log-prob per token")
    parser.add_argument("--seed", type=int, default=0, help="random control, exemplars, bootstrap, hard-steering draws")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--divergence", type=Path, help="analyze_routing routing_table.{json,csv} for the correlation")
    parser.add_argument("--no-correlation", dest="correlation", action="store_false",
                        help="skip the divergence-accuracy correlation")
    parser.add_argument("--max-passages", type=int, help="FLORES passages per language for computed divergence")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        settings = EvalSettings(
            chat=args.chat, chat_template=args.chat_template.read_text() if args.chat_template else None,
            batch_size=args.batch_size, max_length=args.max_length, limit=args.limit,
            buckets=tuple(int(b) for b in args.buckets.split(",")) if args.buckets else None,
            truncation=args.truncate, seed=args.seed,
            shots=args.shots, shot_source=args.shot_source, max_new_tokens=args.max_new_tokens,
            options=args.options, length_normalized=args.length_normalized, template=args.template,
            instruction=args.instruction, stop=tuple(args.stop), answer_format=args.answer_format,
            chat_date=args.chat_date, reasoning_effort=args.reasoning_effort)
        config = SteerEvalConfig(
            model=args.model, task=args.task, experts=args.experts, out_dir=args.out,
            languages=tuple(code.strip() for code in args.langs.split(",") if code.strip()), mode=args.mode,
            lam=args.lam, window=args.window, control=args.control, eps=args.eps, eps_std=args.eps_std,
            seed=args.seed, eval=settings,
            source_dir=args.data_dir, tfds_dir=args.tfds_dir, tokenizer=args.tokenizer, dtype=args.dtype,
            n_boot=args.n_boot, correlation=args.correlation, divergence=args.divergence,
            max_passages=args.max_passages)
        prepared = prepare(config)
    summary = execute(prepared)
    for row in summary["table"]:
        print(f"{row['language']:>9}  n={row['n']:<4} baseline {row['base_accuracy']:.3f}  steered "
              f"{row['steer_accuracy']:.3f}  diff {row['difference']:+.3f} "
              f"[{row['difference_ci_low']:+.3f}, {row['difference_ci_high']:+.3f}]  McNemar p={row['mcnemar_p']:.3g}"
              + (f"  unanswered {row['base_unanswered']}/{row['steer_unanswered']}"
                 if row["base_unanswered"] or row["steer_unanswered"] else ""))
    print(f"wrote results to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
