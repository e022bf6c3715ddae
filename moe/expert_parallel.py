"""Expert-parallel MoE FFN under `jax.shard_map`: exact and dropless.

Tokens lie over ("data", "expert") and routed experts over "expert" (their hidden dimension over "model").
Each device all-gathers the tokens of its data shard over the expert axis, runs the ordinary dropless
dispatch (`moe.dispatch.expert_ffn`) on its local experts only, and a reduce-scatter over "expert" (plus a
sum over "model" when the experts' hidden dimension is split there) adds the partial outputs back onto the
devices that own the tokens. Every (token, expert) assignment is computed once; none is dropped.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from moe.dispatch import Activation, ExpertParams, expert_ffn
from moe.sharding import BATCH_AXES, expert_spec

Array = jax.Array


def expert_parallel_ffn(x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation, mesh: Mesh,
                        mode: str = "auto", layer: Array | None = None) -> Array:
    """`expert_ffn` with experts split over the mesh. x [T, D]; weights/index [T, k]; p and layer as in
    expert_ffn (one layer's experts, or a stack and the layer index).

    T must be divisible by the data x expert device count; `mode` is the dispatch run on each device, on the
    stack it holds (no per-layer copy where that dispatch reads the stack in place).
    """
    parts = mesh.shape["data"] * mesh.shape["expert"]
    if x.shape[0] % parts:
        raise ValueError(f"expert-parallel dispatch needs the token count (batch x seq = {x.shape[0]}) divisible "
                         f"by data x expert = {parts}")
    specs = {name: expert_spec(name, value.shape, mesh) for name, value in p.items()}
    hidden_split = specs["gate_up"][-1] == "model"
    tokens = P(BATCH_AXES, None)

    def local(x: Array, weights: Array, index: Array, p: ExpertParams, layer: Array | None) -> Array:
        x, weights, index = (jax.lax.all_gather(a, "expert", axis=0, tiled=True) for a in (x, weights, index))
        num_local = p["gate_up"].shape[-4]
        local_index = index - jax.lax.axis_index("expert") * num_local
        here = (local_index >= 0) & (local_index < num_local)
        # Other shards' assignments go to expert `num_local`, which no dispatch computes, with weight 0.
        index = jnp.where(here, local_index, num_local)
        weights = jnp.where(here, weights, jnp.zeros_like(weights))
        if hidden_split and "down_bias" in p:  # the bias joins the sum over "model" once
            p = p | {"down_bias": jnp.where(jax.lax.axis_index("model") == 0, p["down_bias"], 0)}
        out = jax.lax.psum_scatter(expert_ffn(x, weights, index, p, act, mode, layer), "expert",
                                   scatter_dimension=0, tiled=True)
        return jax.lax.psum(out, "model") if hidden_split else out

    # check_vma=False: the inner dispatch's lax.cond branches differ in varying-axis types; the output is
    # replicated over "model" by the psum above (or because nothing in it varies over "model").
    layer_spec = None if layer is None else P()
    return jax.shard_map(local, mesh=mesh, in_specs=(tokens, tokens, tokens, specs, layer_spec), out_specs=tokens,
                         check_vma=False)(x, weights, index, p, layer)


@dataclasses.dataclass(frozen=True)
class ExpertParallel:
    """A dispatch for `MoeTransformer(config, dispatch=ExpertParallel(mesh))`: expert-parallel over `mesh`,
    running the dispatch `inner` (a mode of `moe.dispatch.DISPATCH_MODES`) on each device."""

    mesh: Mesh
    inner: str = "auto"

    def __call__(self, x: Array, weights: Array, index: Array, p: ExpertParams, act: Activation,
                 layer: Array | None = None) -> Array:
        return expert_parallel_ffn(x, weights, index, p, act, self.mesh, self.inner, layer)
