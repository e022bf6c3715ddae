#!/usr/bin/env python
"""Middle-layer routing divergence from English vs BELEBELE accuracy across languages (the paper's claim 2).

Measures each language's routing on FLORES passages as analyze_routing.py does (resumable per language, in
--routing-dir, default --out: point it at an analyze_routing output folder to reuse its results), scores
BELEBELE in every language (resumable per language), and correlates the mean divergence over the middle
window with accuracy across the languages other than the reference: Pearson and Spearman r with p-values
and bootstrap intervals over languages. Writes to --out: correlation.{json,csv}, divergence_by_layer.csv and
correlation.png. Languages may be FLORES-200 codes or BELEBELE's short codes (id, zh-s, ...).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _codes(text: str) -> list[str]:
    return [code.strip() for code in text.split(",") if code.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF checkpoint folder, converted folder or hub id")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="folder laid out like shared/data (flores200/, belebele/)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--langs", type=_codes, default=None,
                        help="comma-separated languages (default: every BELEBELE language in --data-dir); the "
                             "reference is always added")
    parser.add_argument("--reference", default="eng_Latn", help="reference language (default eng_Latn)")
    parser.add_argument("--routing-dir", type=Path,
                        help="where per-language routing results are stored and reused (default: --out)")
    parser.add_argument("--window", help="middle window FIRST:LAST (MoE layers, 0-indexed, inclusive; default: "
                                         "selected from the mean divergence curve as analyze_routing does)")
    parser.add_argument("--window-fraction", type=float, default=0.25, help="window selection rule (default 0.25)")
    parser.add_argument("--window-margin", type=int, default=0, help="shrink the selected window (default 0)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=True,
                      help="passages and BELEBELE prompts as a user turn of the chat template (default)")
    mode.add_argument("--plain", dest="chat", action="store_false", help="plain text")
    parser.add_argument("--chat-template", type=Path, help="Jinja chat template file replacing the tokenizer's")
    parser.add_argument("--tokenizer", help="tokenizer.json file or folder (default: the model folder)")
    parser.add_argument("--max-passages", type=int, help="first N FLORES passages per language (default: all)")
    parser.add_argument("--limit", type=int, help="BELEBELE items per language (default: all)")
    parser.add_argument("--options", choices=("letter", "text"), default="letter",
                        help="BELEBELE: score the option letter (default) or the option text")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=4096, help="longest sequence in tokens (default 4096)")
    parser.add_argument("--truncate", choices=("error", "keep_start", "keep_end"), default="error",
                        help="sequences longer than --max-length: error (default) or keep their start/end")
    parser.add_argument("--seed", type=int, default=0, help="consistency pairs and bootstrap")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--tfds-dir", type=Path, help="where TFDS prepares the data (default: TFDS's own)")
    parser.add_argument("--restart", action="store_true", help="discard stored per-language results")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from routing.correlate_pipeline import CorrelateConfig, execute, prepare  # after parsing: --help stays fast
    from routing.tasks import EvalSettings

    try:
        settings = EvalSettings(batch_size=args.batch_size, max_length=args.max_length, truncation=args.truncate,
                                limit=args.limit, options=args.options, seed=args.seed)
        prepared = prepare(CorrelateConfig(
            model=args.model, data_dir=args.data_dir, out_dir=args.out, languages=args.langs,
            reference=args.reference, routing_dir=args.routing_dir, window=args.window,
            window_fraction=args.window_fraction, window_margin=args.window_margin, tokenizer=args.tokenizer,
            chat=args.chat,
            chat_template=args.chat_template.read_text(encoding="utf-8") if args.chat_template else None,
            max_passages=args.max_passages, batch_size=args.batch_size, max_length=args.max_length,
            truncation=args.truncate, seed=args.seed, dtype=args.dtype, eval=settings, n_boot=args.n_boot,
            tfds_dir=args.tfds_dir, restart=args.restart, progress=args.progress))
    except (ValueError, OSError) as err:
        parser.error(str(err))
    record = execute(prepared)

    def interval(ci: list) -> str:
        return "n/a" if None in ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"

    confidence = f"{100 * record['bootstrap']['confidence']:g}%"
    print(f"{record['n']} languages, {record['measure']} vs BELEBELE accuracy:")
    for name, key, p in (("Pearson r", "pearson", "pearson_p"), ("Spearman rho", "spearman", "spearman_p")):
        value = record["pearson_r" if key == "pearson" else "spearman_rho"]
        print(f"  {name} = {'n/a' if value is None else f'{value:+.3f}'}, {confidence} bootstrap CI "
              f"{interval(record[f'{key}_ci'])}, p = {'n/a' if record[p] is None else f'{record[p]:.3g}'}")
    print(f"wrote {args.out / 'correlation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
