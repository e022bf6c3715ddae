#!/usr/bin/env python
"""Convert an HF MoE checkpoint (folder or hub id) into this library's orbax format, atomically."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax.numpy as jnp

from moe.convert import convert_hf_folder, resolve_model_path, save_converted

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("hf_dir", help="HF checkpoint folder (config.json + *.safetensors) or hub id")
    parser.add_argument("out_dir", type=Path, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and not args.overwrite:
        parser.error(f"{args.out_dir} already exists (use --overwrite to replace it)")
    start = time.perf_counter()
    folder = resolve_model_path(args.hf_dir)
    config, params = convert_hf_folder(folder, DTYPES[args.dtype])
    save_converted(args.out_dir, config, params, side_files_from=folder, overwrite=args.overwrite)
    print(f"converted {config.family} ({config.num_layers} layers, {config.num_experts} experts) "
          f"to {args.out_dir} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
