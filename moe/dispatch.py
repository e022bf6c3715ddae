"""Exact, dropless expert dispatch: every (token, expert) assignment is computed, none is dropped.

`expert_ffn` is the one entry point. Expert weights are fused: `gate_up` [E, D, 2, F] holds each expert's gate
and up projections side by side, so one [rows, D] x [D, 2F] matmul computes both. The parameters of a whole
layer stack may be passed ([L, E, ...]) with the `layer` index: the blocked path then reads each expert's
weights straight out of the stack, so no per-layer copy of the experts is made (the other paths slice the
layer out first). Implementations:
- "blocked": sort assignments by expert; `lax.scan` over the experts, each reading its weights once and
  running its rows through in blocks of `block_rows(...)` rows (empty experts and blocks are skipped with
  `lax.cond`). Its gradient is blocked the same way (a custom VJP): differentiating the scan itself made every
  block add a whole [T, D] and [E, D, 2F] cotangent, which grew with T^2 and E^2.
- "ragged": `jax.lax.ragged_dot` over the expert-sorted rows.
- "megablox": the Pallas TPU grouped matmul `jax.experimental.pallas.ops.tpu.megablox.gmm` (MaxText's default
  for dropless MoE on TPU) over the same rows; `interpret=True` runs it anywhere (slowly), for tests.
- "dense": every expert on every token, combined with a [T, E] weight matrix. The simple reference path.
"auto" picks by backend (`choose`), for inference and training alike:
- CPU: "blocked". Measured with `scripts/benchmark.py --dispatch-sweep --reps 5` (README, "Benchmark") on one
  layer, T in {64, 512, 2048, 16384} tokens, (E, k) in {(8, 2), (64, 8), (128, 8)} and (D, F) in
  {(64, 64), (2048, 768)}, float32 (idle 2-core CPU, jax 0.10.2, 2026-12-06): blocked took 0.10-0.76x dense's
  time forward (21 shapes timed) and 0.12-1.03x forward+backward (17 shapes; 1.03x, a tie, at T=64, E=8,
  D=2048).
- GPU: "dense". On an H100 with jax 0.11, dense ran 3.9x faster than ragged_dot at 1k tokens and 5x faster
  at 16k tokens. Dense does E/k times the expert FLOPs, so a grouped-GEMM kernel should replace it at scale;
- TPU: "megablox" (not measured in this project: no TPU; exactness is tested in interpret mode on CPU).
A callable with expert_ffn's signature (less `mode`), such as `moe.expert_parallel.ExpertParallel(mesh)`, may
stand in for a mode name.
"""
from __future__ import annotations

from functools import partial
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

DISPATCH_MODES = ("auto", "blocked", "ragged", "megablox", "dense")


def choose(backend: str | None = None) -> str:
    """The dispatch "auto" runs on `backend` (default: JAX's default backend), for inference and training
    alike. The measurements behind it (module docstring) found no shape at which the choice flips."""
    return {"cpu": "blocked", "gpu": "dense", "tpu": "megablox"}.get(backend or jax.default_backend(), "ragged")


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


def _each_expert(carry, sizes: Array, fn: Callable):
    """carry through fn(carry, e) for every expert e with rows (a scan over the experts, empty ones skipped)."""
    def step(carry, e):
        return jax.lax.cond(sizes[e] > 0, lambda c: fn(c, e), lambda c: c, carry), None
    return jax.lax.scan(step, carry, jnp.arange(sizes.shape[0]))[0]


def _block_plan(x: Array, tokens: Array, sizes: Array, block: int) -> tuple[Array, int]:
    """Each expert's first sorted row, and the most blocks an expert can need (it takes each token at most
    once); `tokens` holds the n sorted rows' tokens and a spare block."""
    return jnp.cumsum(sizes) - sizes, -(-min(x.shape[0], tokens.shape[0] - block) // block)


def _each_block(carry, size: Array, block: int, max_blocks: int, fn: Callable):
    """carry through fn(carry, offset) for every block of `block` rows of an expert's `size` rows (offset: the
    block's first row within the expert's); a scan over at most max_blocks blocks, those past the rows skipped."""
    def step(carry, i):
        return jax.lax.cond(i * block < size, lambda c: fn(c, i * block), lambda c: c, carry), None
    return jax.lax.scan(step, carry, jnp.arange(max_blocks))[0]


def _expert_weights(p: ExpertParams, layer: Array, e: Array) -> dict[str, Array]:
    """Expert e's weights of the stack's `layer`, as one block's matmuls use them (gate_up [D, 2F])."""
    w = {name: value[layer, e] for name, value in p.items()}
    w["gate_up"] = w["gate_up"].reshape(w["gate_up"].shape[0], -1)
    if "gate_up_bias" in w:
        w["gate_up_bias"] = w["gate_up_bias"].reshape(-1)
    return w


def _blocked_rows(act: Activation, block: int, keep_pre: bool, x: Array, tokens: Array, sizes: Array,
                  p: ExpertParams, layer: Array) -> tuple[Array, Array | None]:
    """Each expert-sorted row's expert output [n + block, D] and, with keep_pre, its gate/up pre-activations
    [n + block, 2F]. Each block writes its rows in place; the rows a last, partial block writes past its expert
    are rewritten by the experts after it (or land in the spare block)."""
    row_start, max_blocks = _block_plan(x, tokens, sizes, block)

    def expert(buffers, e):
        w = _expert_weights(p, layer, e)

        def run_block(buffers, offset):
            start = row_start[e] + offset
            h = x[jax.lax.dynamic_slice_in_dim(tokens, start, block)] @ w["gate_up"] + w.get("gate_up_bias", 0)
            y = _split(h, act) @ w["down"] + w.get("down_bias", 0)
            return tuple(jax.lax.dynamic_update_slice_in_dim(buffer, v.astype(buffer.dtype), start, 0)
                         for buffer, v in zip(buffers, (y, h)))

        return _each_block(buffers, sizes[e], block, max_blocks, run_block)

    two_f = p["gate_up"].shape[-1] * 2
    buffers = (jnp.zeros((tokens.shape[0], x.shape[1]), x.dtype),)
    buffers += (jnp.zeros((tokens.shape[0], two_f), x.dtype),) if keep_pre else ()
    buffers = _each_expert(buffers, sizes, expert)
    return buffers[0], buffers[1] if keep_pre else None


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _expert_rows(act: Activation, block: int, x: Array, tokens: Array, sizes: Array, p: ExpertParams,
                 layer: Array) -> Array:
    """Each expert-sorted row's expert output [n + block, D]; its gradient is itself blocked (`_rows_bwd`)."""
    return _blocked_rows(act, block, False, x, tokens, sizes, p, layer)[0]


def _rows_fwd(act, block, x, tokens, sizes, p, layer):
    rows, pre = _blocked_rows(act, block, True, x, tokens, sizes, p, layer)
    return rows, (x, tokens, sizes, p, layer, pre)


def _rows_bwd(act, block, residuals, d_rows):
    """The gradient of `_expert_rows` w.r.t. x and the experts, block by block like the forward: each block
    reads its pre-activations and output cotangents, adds its rows' input gradients into d_x and its weight
    gradients into its expert's (float32, written into the layer's gradient when the expert is done), masking
    the rows past the expert. Work grows with the assignments."""
    x, tokens, sizes, p, layer, pre = residuals
    row_start, max_blocks = _block_plan(x, tokens, sizes, block)
    f32 = partial(jnp.matmul, preferred_element_type=jnp.float32)

    def expert(carry, e):
        d_x, d_layer = carry
        w = _expert_weights(p, layer, e)

        def run_block(carry, offset):
            d_x, d_w = carry
            start = row_start[e] + offset
            index = jax.lax.dynamic_slice_in_dim(tokens, start, block)
            mine = (offset + jnp.arange(block) < sizes[e])[:, None]
            dy = jnp.where(mine, jax.lax.dynamic_slice_in_dim(d_rows, start, block), 0)
            hidden, act_vjp = jax.vjp(lambda h: _split(h, act), jax.lax.dynamic_slice_in_dim(pre, start, block))
            dh = act_vjp((dy @ w["down"].T).astype(hidden.dtype))[0]
            grads = {"gate_up": f32(x[index].T, dh), "down": f32(hidden.T, dy),
                     "gate_up_bias": dh.sum(0, dtype=jnp.float32), "down_bias": dy.sum(0, dtype=jnp.float32)}
            d_x = d_x.at[index].add(f32(dh, w["gate_up"].T))
            return d_x, {name: d_w[name] + grads[name] for name in d_w}

        d_w = {name: jnp.zeros(w[name].shape, jnp.float32) for name in w}
        d_x, d_w = _each_block((d_x, d_w), sizes[e], block, max_blocks, run_block)
        return d_x, {name: value.at[e].set(d_w[name].reshape(value.shape[1:]).astype(value.dtype))
                     for name, value in d_layer.items()}

    d_layer = {name: jnp.zeros(value.shape[1:], value.dtype) for name, value in p.items()}
    d_x, d_layer = _each_expert((jnp.zeros(x.shape, jnp.float32), d_layer), sizes, expert)
    # One update of a zero stack, outside the loops, as JAX transposes an indexing: XLA folds it into the
    # caller's running sum (a layer scan's gradient of the stack) instead of adding a whole stack per layer.
    # A stack of one layer (`blocked_ffn` without `layer`) is the layer's gradient itself: no second copy.
    d_stack = {name: d_layer[name][None] if value.shape[0] == 1 else
               jnp.zeros_like(value).at[layer].set(d_layer[name]) for name, value in p.items()}
    return d_x.astype(x.dtype), None, None, d_stack, None


_expert_rows.defvjp(_rows_fwd, _rows_bwd)


def blocked_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation,
                layer: Array | None = None, block: int | None = None) -> Array:
    """Per-expert matmuls over the expert-sorted rows, `block` rows at a time (default `block_rows`).

    A `lax.scan` over the experts reads each expert's [D, 2F] and [F, D] weights once (straight out of the
    stack when `layer` is given) and scans that expert's rows block by block, skipping empty experts and
    blocks with `lax.cond`. The gradient is blocked the same way (a custom VJP), so a training step's work and
    memory grow with the assignments, as the forward's do; forward-mode differentiation (`jax.jvp`) is not
    defined through it. Assignments to experts outside [0, E) contribute nothing.
    """
    p = {name: jnp.asarray(value) for name, value in p.items()}
    if layer is None:  # one layer: a stack of one
        p, layer = {name: value[None] for name, value in p.items()}, jnp.int32(0)
    num_experts = p["gate_up"].shape[1]
    n = index.size
    block = min(block or block_rows(n, num_experts), max(8, n))
    tokens, _, position, sizes = _sorted_assignments(index, num_experts)
    rows = _expert_rows(act, block, x, jnp.pad(tokens, (0, block)), sizes, p, jnp.asarray(layer, jnp.int32))
    # Rows past the last expert's (assignments to experts outside [0, E)) may hold a partial block's spill.
    rows = jnp.where((jnp.arange(rows.shape[0]) < jnp.sum(sizes))[:, None], rows, 0)
    return _combine(rows, position, weights, x.dtype)


def _grouped_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation, layer: Array | None,
                 grouped_matmul: Callable[[Array, Array, Array], Array], row_multiple: int = 1) -> Array:
    """The FFN over expert-sorted rows with `grouped_matmul(rows, rhs [E, K, N], sizes)` for each projection.

    Rows are padded to a multiple of `row_multiple`. Rows in no group (padding, or assignments to experts
    outside this shard's range) are zeroed before and after each kernel, whatever the kernel leaves there, so
    no garbage (NaN) in them reaches the output or, through the activation's derivative, the gradient.
    """
    p = _layer_slice(p, layer)
    num_experts, d, _, f = p["gate_up"].shape
    tokens, experts, position, sizes = _sorted_assignments(index, num_experts)
    pad = -tokens.size % row_multiple
    tokens = jnp.pad(tokens, (0, pad))
    experts = jnp.minimum(jnp.pad(experts, (0, pad), constant_values=num_experts), num_experts - 1)
    in_group = (jnp.arange(tokens.size) < jnp.sum(sizes))[:, None]

    def grouped(rows: Array, rhs: Array, bias: Array | None) -> Array:
        out = grouped_matmul(jnp.where(in_group, rows, 0).astype(x.dtype), rhs, sizes)
        return jnp.where(in_group, out if bias is None else out + bias[experts], 0)

    h = grouped(x[tokens], p["gate_up"].reshape(num_experts, d, 2 * f),
                p["gate_up_bias"].reshape(num_experts, 2 * f) if "gate_up_bias" in p else None)
    y = grouped(_split(h, act), p["down"], p.get("down_bias"))
    return _combine(y, position, weights, x.dtype)


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
    if mode == "auto":
        mode = choose()
    paths = {"blocked": blocked_ffn, "ragged": ragged_ffn, "megablox": megablox_ffn, "dense": dense_ffn}
    if mode not in paths:
        raise ValueError(f"unknown dispatch mode {mode!r}; choose one of {DISPATCH_MODES}")
    return paths[mode](x, weights, index, p, act, layer)
