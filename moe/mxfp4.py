"""MXFP4 expert weights (released gpt-oss checkpoints): dequantisation of `*_blocks` / `*_scales` pairs.

Layout, as the checkpoints store it: `X_blocks` [E, R, G, B] uint8 holds two FP4 (E2M1) codes per byte, low
nibble first; `X_scales` [E, R, G] uint8 holds one E8M0 exponent (biased by 127) per group of 2 * B values. The
dequantised `X` is [E, G * 2 * B, R]: the layout of the unquantised HF parameter (gpt-oss stores [E, in, out]),
so the same name rules place it. Values are `ldexp(fp4, scale - 127)`, exact in float32, then rounded once to the
target dtype, which reproduces transformers' dequantisation bit for bit.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from moe.checkpoint_files import CheckpointError

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
SUFFIXES = {"_blocks": "blocks", "_scales": "scales"}


def dequantize(blocks: np.ndarray, scales: np.ndarray, dtype: np.dtype = np.float32, name: str = "MXFP4 tensor"
               ) -> np.ndarray:
    """blocks [E, R, G, B] uint8 + scales [E, R, G] uint8 -> [E, G * 2 * B, R] in `dtype`, one expert at a time."""
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise CheckpointError(f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.ndim != 4 or tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise CheckpointError(f"{name}: inconsistent MXFP4 shapes: blocks {tuple(blocks.shape)} and scales "
                              f"{tuple(scales.shape)} (expected blocks [E, R, G, B] and scales [E, R, G])")
    experts, rows, groups, width = blocks.shape
    out = np.empty((experts, groups * width * 2, rows), dtype)
    for e in range(experts):
        packed = np.asarray(blocks[e])
        values = np.empty((rows, groups, width, 2), np.float32)
        values[..., 0] = FP4_VALUES[packed & 0x0F]
        values[..., 1] = FP4_VALUES[packed >> 4]
        exponents = np.asarray(scales[e]).astype(np.int32)[..., None, None] - 127
        with np.errstate(over="ignore"):  # exact ldexp like torch.ldexp; out-of-range values become inf, as there
            out[e] = np.ldexp(values, exponents).reshape(rows, groups * width * 2).T
    return out


def dequantize_pairs(tensors: Iterable[tuple[str, np.ndarray]], dtype: np.dtype = np.float32
                     ) -> Iterator[tuple[str, np.ndarray]]:
    """Pass (name, array) through, replacing each `X_blocks` + `X_scales` pair by the dequantised `X`.

    The two halves of a pair arrive separately (possibly in different shards): the first is held until its
    partner comes. Held arrays are the memory-mapped views the checkpoint reader yields, so holding costs no
    copy; at most one dequantised tensor is alive at a time. A half whose partner never comes is an error.
    """
    pending: dict[str, tuple[str, np.ndarray]] = {}
    for name, array in tensors:
        suffix = name[-len("_blocks"):]
        if suffix not in SUFFIXES:
            yield name, array
            continue
        base, kind = name[:-len(suffix)], SUFFIXES[suffix]
        if base not in pending:
            pending[base] = (kind, array)
            continue
        other_kind, other = pending.pop(base)
        if other_kind == kind:
            raise CheckpointError(f"{name}: MXFP4 {kind} tensor appears twice")
        blocks, scales = (array, other) if kind == "blocks" else (other, array)
        yield base, dequantize(blocks, scales, dtype, base)
    if pending:
        unpaired = [f"{base}_{kind} (no {base}_{'scales' if kind == 'blocks' else 'blocks'})"
                    for base, (kind, _) in pending.items()]
        raise CheckpointError("MXFP4 tensor(s) without their partner: " + ", ".join(unpaired))
