"""Exact, dropless expert dispatch: every (token, expert) assignment is computed, none is dropped.

`expert_ffn` is the one entry point. Expert weights are fused: `gate_up` [E, D, 2, F] holds each expert's gate
and up projections side by side, so one [rows, D] x [D, 2F] matmul computes both. The parameters of a whole
layer stack may be passed ([L, E, ...]) with the `layer` index: the blocked path then reads each expert's
weights straight out of the stack, so no per-layer copy of the experts is made (the other paths slice the
layer out first). Implementations:
- "blocked": sort assignments by expert; `lax.scan` over the experts, each reading its weights once and
  running its rows through in blocks of `block_rows(...)` rows (empty experts and blocks are skipped with
  `lax.cond`). Fast on CPU for inference; its backward is slow (below).
- "ragged": `jax.lax.ragged_dot` over the expert-sorted rows.
- "megablox": the Pallas TPU grouped matmul `jax.experimental.pallas.ops.tpu.megablox.gmm` (MaxText's default
  for dropless MoE on TPU) over the same rows; `interpret=True` runs it anywhere (slowly), for tests.
- "dense": every expert on every token, combined with a [T, E] weight matrix. The simple reference path.
"auto" and "auto-train" (for a step that is differentiated; `moe.train.make_train_step` asks for it) pick by
backend and, on CPU, by what the step does (`choose`):
- CPU: "blocked" for inference, "dense" for training. Measured with
  `scripts/benchmark.py --dispatch-sweep --reps 5` (README, "Benchmark"; 2-core CPU under load, jax 0.10.2,
  2026-12-05) on T in {64, 512, 2048, 16384} tokens, (E, k) in {(8, 2), (64, 8), (128, 8)} and (D, F) in
  {(64, 64), (2048, 768)}, float32: blocked's forward took 0.10-0.74x dense's time on all 21 shapes timed;
  its forward+backward took 2.2-24x dense's on the 12 shapes timed, and on 6 more, timed by first call only
  (compilation included), dense took 3-17 s and blocked 18 s once, past 60 s twice and out of 8 GiB three
  times. Blocked's backward grows faster than its work: at E=8, D=F=64, 8x the tokens (2048 -> 16384) took
  58x the time (0.15 -> 8.4 s); dense's backward is plain batched matmuls. Where dense's intermediates do not
  fit in memory (they grow as layers x T x E x (3F + D)), neither path is measured to train well on CPU.
- GPU: "dense". On an H100 with jax 0.11, dense ran 3.9x faster than ragged_dot at 1k tokens and 5x faster
  at 16k tokens. Dense does E/k times the expert FLOPs, so a grouped-GEMM kernel should replace it at scale;
- TPU: "megablox" (not measured in this project: no TPU; exactness is tested in interpret mode on CPU).
A callable with expert_ffn's signature (less `mode`), such as `moe.expert_parallel.ExpertParallel(mesh)`, may
stand in for a mode name.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
# gate_up [E, D, 2, F], down [E, F, D], optional gate_up_bias [E, 2, F] and down_bias [E, D]; with a leading
# layer axis [L, ...] when a `layer` index is passed.
ExpertParams = dict[str, Array]
Activation = Callable[[Array, Array], Array]  # (gate, up) -> hidden
# A mode name or a dispatcher (x, weights, index, p, act, layer) -> out
Dispatch = str | Callable[[Array, Array, Array, ExpertParams, Activation, Array | None], Array]

DISPATCH_MODES = ("auto", "auto-train", "blocked", "ragged", "megablox", "dense")


def choose(training: bool = False, backend: str | None = None) -> str:
    """The dispatch "auto" (or with `training`, "auto-train") runs on `backend` (default: JAX's default
    backend). The measurements behind it (module docstring) found no shape at which the choice flips."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return {"gpu": "dense", "tpu": "megablox"}.get(backend, "ragged")
    return "dense" if training else "blocked"


def block_rows(num_assignments: int, num_experts: int) -> int:
    """Rows per block of the blocked dispatch: the average rows per expert rounded up to a power of two, in
    [8, 64]. Measured on CPU (`scripts/benchmark.py --block-sweep`, README): on the OLMoE and Qwen3-30B shapes
    (64-128 rows per expert), 64-row blocks ran 1.5-1.8x faster than 16 or 32 rows (small matmuls run slowly)
    and 6-24% faster than 128 (more padding); on the small-expert Qwen3 shape all sizes were within the noise.
    With few rows per expert (decoding), smaller blocks avoid computing mostly padding."""
    average = num_assignments / max(num_experts, 1)
    block = 8
    while block < 64 and block < average:
        block *= 2
    return block


def _layer_slice(p: ExpertParams, layer: Array | None) -> ExpertParams:
    """One layer's experts out of a stacked parameter dict (a copy); `p` itself when layer is None."""
    return p if layer is None else {name: value[layer] for name, value in p.items()}


def _split(h: Array, act: Activation) -> Array:
    """act(gate, up) of fused projections h [..., 2F] (gate first)."""
    f = h.shape[-1] // 2
    return act(h[..., :f], h[..., f:])


def _combine(rows: Array, position: Array, weights: Array, dtype) -> Array:
    """out[t] = sum_j weights[t, j] * rows[position[t * k + j]], in float32. rows [R, D]; weights [T, k]."""
    picked = rows[position].astype(jnp.float32).reshape(*weights.shape, rows.shape[-1])
    return jnp.einsum("tk,tkd->td", weights.astype(jnp.float32), picked).astype(dtype)


def dense_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation,
              layer: Array | None = None) -> Array:
    """Reference: all experts on all tokens. x [T, D], weights/index [T, k]."""
    p = _layer_slice(p, layer)
    num_experts, d, _, f = p["gate_up"].shape
    combine = jnp.zeros((x.shape[0], num_experts), jnp.float32)
    combine = combine.at[jnp.arange(x.shape[0])[:, None], index].add(weights.astype(jnp.float32))
    h = jnp.einsum("td,edf->etf", x, p["gate_up"].reshape(num_experts, d, 2 * f))
    if "gate_up_bias" in p:
        h = h + p["gate_up_bias"].reshape(num_experts, 1, 2 * f)
    out = jnp.einsum("etf,efd->etd", _split(h, act), p["down"])
    if "down_bias" in p:
        out = out + p["down_bias"][:, None]
    return jnp.einsum("etd,te->td", out.astype(jnp.float32), combine).astype(x.dtype)


def _sorted_assignments(index: Array, num_experts: int) -> tuple[Array, Array, Array, Array]:
    """Flattened [T, k] assignments sorted by expert (stable): (token of each sorted row, its expert, the sorted
    row of each assignment, rows per expert). Experts outside [0, num_experts) sort last and count nowhere."""
    flat = index.reshape(-1)
    tokens = jnp.repeat(jnp.arange(index.shape[0], dtype=jnp.int32), index.shape[1])
    order = jnp.argsort(flat, stable=True)
    position = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    return tokens[order], flat[order], position, sizes


def blocked_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation,
                layer: Array | None = None, block: int | None = None) -> Array:
    """Per-expert matmuls over the expert-sorted rows, `block` rows at a time (default `block_rows`).

    A `lax.scan` over the experts reads each expert's [D, 2F] and [F, D] weights once (straight out of the
    stack when `layer` is given) and scans that expert's rows block by block, skipping empty experts and
    blocks with `lax.cond`. Each block writes its rows in place into the sorted output; the rows a last,
    partial block writes past its expert are rewritten by the experts after it (or land in a spare block).
    """
    p = {name: jnp.asarray(value) for name, value in p.items()}
    num_experts, d, _, f = p["gate_up"].shape[-4:]
    n = index.size
    block = min(block or block_rows(n, num_experts), max(8, n))
    tokens, _, position, sizes = _sorted_assignments(index, num_experts)
    row_start = jnp.cumsum(sizes) - sizes
    max_blocks = -(-min(index.shape[0], n) // block)  # an expert takes each token at most once
    tokens = jnp.pad(tokens, (0, block))

    def weight(name: str, e: Array) -> Array:
        return p[name][e] if layer is None else p[name][layer, e]

    def one_expert(out: Array, e: Array) -> tuple[Array, None]:
        def run(out: Array) -> Array:
            gate_up, down = weight("gate_up", e).reshape(d, 2 * f), weight("down", e)
            gate_up_bias = weight("gate_up_bias", e).reshape(2 * f) if "gate_up_bias" in p else 0
            down_bias = weight("down_bias", e) if "down_bias" in p else 0

            def one_block(out: Array, i: Array) -> tuple[Array, None]:
                def compute(out: Array) -> Array:
                    start = row_start[e] + i * block
                    rows = x[jax.lax.dynamic_slice_in_dim(tokens, start, block)]
                    y = _split(rows @ gate_up + gate_up_bias, act) @ down + down_bias
                    return jax.lax.dynamic_update_slice_in_dim(out, y.astype(out.dtype), start, 0)

                return jax.lax.cond(i * block < sizes[e], compute, lambda out: out, out), None

            return jax.lax.scan(one_block, out, jnp.arange(max_blocks))[0]

        return jax.lax.cond(sizes[e] > 0, run, lambda out: out, out), None

    out, _ = jax.lax.scan(one_expert, jnp.zeros((n + block, d), x.dtype), jnp.arange(num_experts))
    return _combine(out, position, weights, x.dtype)


def _grouped_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation, layer: Array | None,
                 grouped_matmul: Callable[[Array, Array, Array], Array], row_multiple: int = 1) -> Array:
    """The FFN over expert-sorted rows with `grouped_matmul(rows, rhs [E, K, N], sizes)` for each projection.

    Rows are padded to a multiple of `row_multiple`; rows in no group (padding, or assignments to experts
    outside this shard's range) are zeroed, whatever the kernel leaves there.
    """
    p = _layer_slice(p, layer)
    num_experts, d, _, f = p["gate_up"].shape
    tokens, experts, position, sizes = _sorted_assignments(index, num_experts)
    pad = -tokens.size % row_multiple
    tokens = jnp.pad(tokens, (0, pad))
    experts = jnp.minimum(jnp.pad(experts, (0, pad), constant_values=num_experts), num_experts - 1)
    in_group = (jnp.arange(tokens.size) < jnp.sum(sizes))[:, None]
    h = grouped_matmul(x[tokens], p["gate_up"].reshape(num_experts, d, 2 * f), sizes)
    if "gate_up_bias" in p:
        h = h + p["gate_up_bias"].reshape(num_experts, 2 * f)[experts]
    y = grouped_matmul(jnp.where(in_group, _split(h, act), 0).astype(x.dtype), p["down"], sizes)
    if "down_bias" in p:
        y = y + p["down_bias"][experts]
    return _combine(jnp.where(in_group, y, 0), position, weights, x.dtype)


def ragged_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation,
               layer: Array | None = None) -> Array:
    """Grouped GEMM over expert-sorted rows with jax.lax.ragged_dot."""
    return _grouped_ffn(x, weights, index, p, act, layer,
                        lambda rows, rhs, sizes: jax.lax.ragged_dot(rows, rhs, sizes).astype(rows.dtype))


MEGABLOX_TILE = (512, 1024, 1024)  # (rows, K, N) tile bounds: MaxText's defaults for its megablox path


def megablox_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation,
                 layer: Array | None = None, interpret: bool = False, tile_rows: int | None = None) -> Array:
    """Grouped GEMM over expert-sorted rows with the Pallas TPU kernel megablox `gmm` (float32 accumulation).

    Tiles are MEGABLOX_TILE, shrunk to the problem; row tiles (`tile_rows`, default MEGABLOX_TILE's) are a
    multiple of 16, the bfloat16 sublane tile. `interpret=True` runs the kernel in the Pallas interpreter on
    any backend.
    """
    from jax.experimental.pallas.ops.tpu.megablox import gmm

    if tile_rows is not None and (tile_rows < 16 or tile_rows % 16):
        raise ValueError(f"tile_rows must be a positive multiple of 16, got {tile_rows}")
    tm = min(tile_rows or MEGABLOX_TILE[0], -(-index.size // 16) * 16)

    def grouped_matmul(rows: Array, rhs: Array, sizes: Array) -> Array:
        tiling = (tm, min(MEGABLOX_TILE[1], rhs.shape[1]), min(MEGABLOX_TILE[2], rhs.shape[2]))
        return gmm(rows, rhs, sizes, preferred_element_type=jnp.float32, tiling=tiling,
                   interpret=interpret).astype(rows.dtype)

    return _grouped_ffn(x, weights, index, p, act, layer, grouped_matmul, row_multiple=tm)


def expert_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation,
               mode: Dispatch = "auto", layer: Array | None = None) -> Array:
    """Weighted sum over each token's selected experts. x [T, D]; weights [T, k] float32; index [T, k] int.

    `p` holds one layer's experts, or a stack of layers ([L, ...]) of which `layer` (an int32 scalar) is used.
    """
    if any(v.dtype != x.dtype for v in p.values()):  # mixed precision: this layer's experts in x's dtype (a copy)
        p, layer = {k: v.astype(x.dtype) for k, v in _layer_slice(p, layer).items()}, None
    if callable(mode):
        return mode(x, weights, index, p, act, layer)
    if mode in ("auto", "auto-train"):
        mode = choose(training=mode == "auto-train")
    paths = {"blocked": blocked_ffn, "ragged": ragged_ffn, "megablox": megablox_ffn, "dense": dense_ffn}
    if mode not in paths:
        raise ValueError(f"unknown dispatch mode {mode!r}; choose one of {DISPATCH_MODES}")
    return paths[mode](x, weights, index, p, act, layer)
