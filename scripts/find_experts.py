#!/usr/bin/env python
"""Task experts (English task data vs English FLORES) and optional language experts of an MoE model.

Writes to --out: experts.json (selected [moe_layer, expert] pairs, settings, Delta tables per MoE layer and
expert, overlap of language and task sets) and delta_task.png (+ delta_{language}.png) heatmaps. Layers are
MoE-layer indices, 0-indexed; --window FIRST:LAST is inclusive (the paper's 1-indexed Qwen3 window 8-35 is 7:34).
--task organism measures the model organism's base problems against its base passages; --data-dir is then the
organism folder (default: the --model folder) and --langs take its own codes.
"""
from __future__ import annotations

import sys

from moe import load_config
from routing.eval.tasks import EXPERT_TASKS
from routing.pipelines.cli import add_chat_flags, add_flags, new_parser, settings_from, user_errors
from routing.pipelines.experts_file import ExpertSettings
from routing.pipelines.find_experts import check_settings, run_expert_search
from routing.window import Window


def build_parser():
    parser = new_parser(__doc__)
    add_flags(parser, run_expert_search, "model", "source_dir", source_dir="folder laid out like shared/data "
                                                                           "(default: download); the organism "
                                                                           "folder for --task organism (default: "
                                                                           "the --model folder)")
    add_flags(parser, ExpertSettings, "task", choices={"task": EXPERT_TASKS},
              task="the task whose experts are found (mgsm: GSM8K train as task data; medical: MedInstruct; "
                   "organism: the organism's base training problems)")
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--tau", type=float, help="select experts with Delta > tau")
    rule.add_argument("--top-n", type=int, help="select the N experts with the largest Delta in the window")
    add_flags(parser, ExpertSettings, "window")
    add_flags(parser, run_expert_search, "out_dir")
    add_flags(parser, ExpertSettings, "languages", languages="comma-separated languages for language experts")
    add_chat_flags(parser, "task data as user/assistant turns, passages as user turns, through the chat template")
    add_flags(parser, ExpertSettings, "chat_template")
    add_flags(parser, run_expert_search, "tokenizer")
    add_flags(parser, ExpertSettings, "num_samples", "seed", "max_passages", "batch_size", "max_length",
              max_length="longest sequence in tokens; longer ones keep their start")
    add_flags(parser, run_expert_search, "tfds_dir", "dtype", "progress")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with user_errors(parser):
        _, config = load_config(args.model)
        settings = settings_from(ExpertSettings, args, window=Window.parse(args.window))
        check_settings(settings, config)
        sets, paths = settings_from(run_expert_search, args, settings=settings)
    print(f"{len(sets.task_experts)} task experts in MoE layers {settings.window.first}-{settings.window.last}"
          + "".join(f"; {lang}: {len(p)} language experts" for lang, p in sets.language_experts.items()))
    if not sets.task_experts:
        print("warning: no expert passes the threshold; lower --tau or use --top-n", file=sys.stderr)
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
