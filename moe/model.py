"""The functional MoE decoder: one Flax module for every family, driven by ModelConfig."""
from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from moe.config import ModelConfig
from moe.dispatch import Dispatch, ExpertParams, expert_ffn
from moe.inputs import check_inputs
from moe.kv_cache import KVCache, LayerCache
from moe.layers import Attention, DenseMLP, Linear, Norm, rope_tables
from moe.layers import attention_mask as make_attention_mask
from moe.routing_rules import route

Array = jax.Array
# A routing edit: any pytree callable as edit(raw_logits [b, s, E], moe_layer) -> edited logits, where
# moe_layer is a traced int32 scalar (the layers are scanned). An edit that holds per-layer data declares
# how many MoE layers it was built for as `num_moe_layers`; the model refuses another count at trace time.
LogitEdit = Callable[[Array, Array], Array]


@flax.struct.dataclass
class MoeOutput:
    """What the model returns: next-token logits and the trace of raw router logits of every MoE layer."""

    logits: Array | None  # [batch, seq, vocab] float32 ([batch, 1, vocab] with last_only; None in analysis mode)
    router_logits: Array  # [moe_layers, batch, seq, experts], raw: before any edit
    cache: KVCache | None = None  # the updated cache when one was passed in


def check_edit(config: ModelConfig, edit: LogitEdit | None) -> None:
    """ValueError if ``edit`` declares a number of MoE layers other than the model's (checked while tracing:
    a traced layer index would otherwise be clamped into the edit's range)."""
    layers = getattr(edit, "num_moe_layers", None)
    if layers is not None and layers != config.num_moe_layers:
        raise ValueError(f"the routing edit was built for {layers} MoE layers; this model has "
                         f"{config.num_moe_layers}")


def swiglu(gate: Array, up: Array) -> Array:
    return jax.nn.silu(gate) * up


def clamped_swiglu(limit: float, alpha: float) -> Callable[[Array, Array], Array]:
    """GPT-OSS's activation: gate clamped above, up clamped both sides, (up + 1) * (gate * sigmoid(alpha * gate))."""
    def act(gate: Array, up: Array) -> Array:
        gate = jnp.minimum(gate, limit)
        up = jnp.clip(up, -limit, limit)
        return (up + 1) * (gate * jax.nn.sigmoid(gate * alpha))
    return act


class Router(nn.Module):
    """Raw gating logits: x @ W (+ bias where the family has one)."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return Linear(self.config.num_experts, self.config.router_bias, self.dtype, name="proj")(x)


class ExpertStack(nn.Module):
    """The routed experts of a stack of MoE layers, on a leading layer axis: `gate_up` [L, E, D, 2, F] (gate and
    up side by side), `down` [L, E, F, D] and, where the family has them, `gate_up_bias` [L, E, 2, F] and
    `down_bias` [L, E, D]. They live outside the layer scan, which passes the whole stack and each layer's
    index to the dispatch: the scan would otherwise copy every layer's experts out of the stack."""

    config: ModelConfig
    num_layers: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self) -> ExpertParams:
        c = self.config
        l, e, d, f = self.num_layers, c.num_experts, c.hidden_size, c.expert_size
        init = nn.initializers.normal(0.02)
        p = {"gate_up": self.param("gate_up", init, (l, e, d, 2, f), self.dtype),
             "down": self.param("down", init, (l, e, f, d), self.dtype)}
        if c.expert_bias:
            p |= {"gate_up_bias": self.param("gate_up_bias", nn.initializers.zeros, (l, e, 2, f), self.dtype),
                  "down_bias": self.param("down_bias", nn.initializers.zeros, (l, e, d), self.dtype)}
        return p


class MoeBlock(nn.Module):
    """Router -> optional edit -> routing rule -> dropless expert dispatch (+ gated shared expert)."""

    config: ModelConfig
    dispatch: Dispatch = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, edit: LogitEdit | None, moe_index: Array, experts: ExpertParams, slot: Array,
                 route_only: Array | None = None) -> tuple[Array, Array]:
        """FFN output and raw router logits of x [b, s, D]; `moe_index` (traced) selects the edit's layer and
        `slot` (traced) this layer's experts in the stacked `experts` (ExpertStack).

        Where `route_only` is true the FFN is skipped (zeros returned): only the router logits are needed.
        """
        c = self.config
        b, s, d = x.shape
        raw = Router(c, self.dtype, name="router")(x)
        gating = raw if edit is None else edit(raw, moe_index)
        weights, index = route(c, gating)
        act = swiglu if c.expert_activation == "swiglu" else clamped_swiglu(c.swiglu_limit, c.swiglu_alpha)

        def ffn(block: MoeBlock, flat: Array, weights: Array, index: Array, p: ExpertParams) -> Array:
            out = expert_ffn(flat, weights, index, p, act, block.dispatch, slot)
            if c.shared_expert_size:
                shared = DenseMLP(c.shared_expert_size, block.dtype, name="shared_expert")(flat)
                gate = Linear(1, dtype=block.dtype, name="shared_gate")(flat)
                out = out + jax.nn.sigmoid(gate) * shared
            return out

        def skip(block: MoeBlock, flat: Array, *_) -> Array:
            return jnp.zeros_like(flat)

        args = (x.reshape(b * s, d), weights.reshape(b * s, -1).astype(x.dtype), index.reshape(b * s, -1), experts)
        out = ffn(self, *args) if route_only is None else nn.cond(route_only, skip, ffn, self, *args)
        return out.reshape(b, s, d), raw


class LayerData(NamedTuple):
    """What varies between the layers of a stack, scanned over its leading layer axis."""

    window: Array  # int32: sliding window, 0 for full attention
    moe_index: Array  # int32: index among the MoE layers (unused by dense layers)
    slot: Array  # int32: index of the layer in its stack (selects its experts in ExpertStack)
    route_only: Array | None  # bool: the FFN is skipped (analysis mode's last MoE layer); None: never
    cache: LayerCache | None  # k/v of the layer when decoding with a cache


class LayerContext(NamedTuple):
    """What every layer of a stack shares, broadcast into the scan."""

    cos: Array
    sin: Array
    query_slots: Array  # [q] slot index of each query token
    key_slots: Array  # [t] slot index of each key
    key_valid: Array  # [b, t] which keys are real tokens
    cache_index: Array | None  # the cache slot the new tokens are written at
    edit: LogitEdit | None
    experts: ExpertParams | None = None  # the stack's experts (ExpertStack), None for dense layers


class DecoderLayer(nn.Module):
    """Pre-norm attention, then an MoE block (`moe`) or a dense MLP. Scanned over a stack of such layers."""

    config: ModelConfig
    moe: bool
    dispatch: Dispatch = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, layer: LayerData, ctx: LayerContext
                 ) -> tuple[Array, tuple[Array | None, LayerCache | None]]:
        c = self.config
        mask = make_attention_mask(ctx.query_slots, ctx.key_slots, ctx.key_valid, layer.window)
        h = Norm(c.norm, c.norm_eps, self.dtype, name="input_norm")(x)
        h, cache = Attention(c, self.dtype, name="attn")(h, ctx.cos, ctx.sin, mask, layer.cache, ctx.cache_index)
        x = x + h
        h = Norm(c.norm, c.norm_eps, self.dtype, name="post_norm")(x)
        if self.moe:
            h, raw = MoeBlock(c, self.dispatch, self.dtype, name="moe")(h, ctx.edit, layer.moe_index, ctx.experts,
                                                                        layer.slot, layer.route_only)
        else:
            h, raw = DenseMLP(c.dense_size, self.dtype, name="mlp")(h), None
        return x + h, (raw, cache)


# A stack of layers of one kind: parameters stacked on a leading layer axis, one compiled body for all of them.
LayerStack = nn.scan(DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(0, nn.broadcast), check_constancy_invariants=False)


class MoeTransformer(nn.Module):
    """Decoder-only MoE language model.

    `apply({"params": p}, input_ids, attention_mask=None, edit=None)` returns MoeOutput. Positions are
    derived from the attention mask (cumulative count of real tokens), so left and right padding give the
    same result at real positions as the unpadded sequence. Inputs are checked by `moe.inputs.check_inputs`
    (values only when concrete) and the edit by `check_edit`.

    Layers are grouped into stacks of consecutive layers of one kind (`ModelConfig.layer_stacks`), each a
    `nn.scan` named `stack_{j}` with parameters stacked on a leading layer axis, so compile time does not grow
    with depth; sliding windows and MoE-layer indices are scanned data. The routed experts of an MoE stack are
    `experts_{j}` (ExpertStack), outside the scan: each layer's dispatch reads them in place.

    `analysis_only=True` computes only the router logits: no layers after the last MoE layer, no FFN in it,
    no final norm or LM head (`logits` is None). `last_only=True` computes the logits of the last position
    only (`logits` [b, 1, vocab]): all that greedy decoding or scoring the next token needs, without the LM
    head's cost at every other position.

    With `cache`, input_ids [b, s] are the next s tokens: they are written at the cache's next slots,
    `attention_mask` [b, s] marks which of them are real, and positions continue from the real tokens
    already cached. Attention is causal over slots, to real tokens only, windowed by slot index.
    """

    config: ModelConfig
    dispatch: Dispatch = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None, edit: LogitEdit | None = None,
                 positions: Array | None = None, analysis_only: bool = False,
                 cache: KVCache | None = None, last_only: bool = False) -> MoeOutput:
        c = self.config
        check_inputs(c.vocab_size, input_ids, attention_mask)
        check_edit(c, edit)
        input_ids = jnp.asarray(input_ids)
        b, s = input_ids.shape
        attention_mask = jnp.ones((b, s), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
        if positions is None:
            seen = 0 if cache is None else jnp.sum(cache.valid, axis=-1, keepdims=True)
            positions = jnp.maximum(seen + jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        embed = self.param("embed", nn.initializers.normal(0.02), (c.vocab_size, c.hidden_size), self.dtype)
        x = embed[input_ids]
        cos, sin = rope_tables(c, positions)
        if cache is None:
            ctx = LayerContext(cos, sin, jnp.arange(s), jnp.arange(s), attention_mask, None, edit)
        else:
            cache = cache.mark(attention_mask)
            ctx = LayerContext(cos, sin, cache.index + jnp.arange(s), jnp.arange(cache.length), cache.valid,
                               cache.index, edit)
        windows = np.asarray([w or 0 for w in c.sliding_windows], np.int32)
        moe_index = np.cumsum(c.moe_layer_flags, dtype=np.int32) - 1
        last_moe = c.moe_layers[-1]
        trace, caches = [], []
        for j, layers in enumerate(c.layer_stacks):
            if analysis_only and layers[0] > last_moe:
                break
            moe = c.moe_layer_flags[layers[0]]
            route_only = np.asarray(layers) == last_moe if analysis_only and last_moe in layers else None
            span = slice(layers[0], layers[-1] + 1)
            data = LayerData(windows[span], moe_index[span], np.arange(len(layers), dtype=np.int32), route_only,
                             None if cache is None else cache.stacks[j])
            experts = ExpertStack(c, len(layers), self.dtype, name=f"experts_{j}")() if moe else None
            x, (raw, layer_cache) = LayerStack(c, moe, self.dispatch, self.dtype, name=f"stack_{j}")(
                x, data, ctx._replace(experts=experts))
            trace += [raw] if moe else []
            caches.append(layer_cache)
        router_logits = jnp.concatenate(trace)
        if analysis_only:
            return MoeOutput(logits=None, router_logits=router_logits)
        if cache is not None:
            cache = cache.replace(stacks=tuple(caches), index=cache.index + s)
        if last_only:
            x = x[:, -1:]
        x = Norm(c.norm, c.norm_eps, self.dtype, name="final_norm")(x)
        if c.tie_embeddings:
            logits = x @ embed.T.astype(x.dtype)
        else:
            logits = Linear(c.vocab_size, c.lm_head_bias, self.dtype, name="lm_head")(x)
        return MoeOutput(logits=logits.astype(jnp.float32), router_logits=router_logits, cache=cache)
