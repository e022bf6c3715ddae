#!/usr/bin/env python
"""Convert an HF MoE checkpoint (folder or hub id) into this library's orbax format, atomically.

The output folder is checked before any work: it must not exist (unless --overwrite, which replaces it
atomically) and must be neither the source folder nor inside it nor around it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from moe.convert import convert_checkpoint
from routing.pipelines.cli import add_flags, new_parser, user_errors
from routing.pipelines.models import DTYPES, load_model


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("hf_dir", help="HF checkpoint folder (config.json + *.safetensors) or hub id")
    parser.add_argument("out_dir", type=Path, help="output folder (must not exist unless --overwrite)")
    add_flags(parser, load_model, "dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with user_errors(parser):
        config = convert_checkpoint(args.hf_dir, args.out_dir, DTYPES[args.dtype], overwrite=args.overwrite)
    print(f"converted {config.family} ({config.num_layers} layers, {config.num_experts} experts) "
          f"to {args.out_dir} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
