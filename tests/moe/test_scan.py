"""Layers scanned in stacks: a program whose size does not grow with depth, analysis mode that stops at the
last router, and per-layer variation (dense layers, sliding windows, MoE-layer indices) carried as data."""
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Var

from moe.config import ModelConfig
from moe.dispatch import expert_ffn
from moe.layers import Linear, Norm, rope_tables
from moe.model import DecoderLayer, LayerContext, LayerData, MoeTransformer
from routing import steering

VOCAB = 131  # a size no other dimension has, so the LM head's matmul is recognisable in the program text
IDS = np.random.RandomState(0).randint(1, VOCAB, (2, 12)).astype(np.int32)
MASK = np.ones_like(IDS)
MASK[1, :4] = 0


def _config(num_layers: int, **fields) -> ModelConfig:
    return ModelConfig(family="tiny", vocab_size=VOCAB, hidden_size=32, num_layers=num_layers, num_heads=4,
                       num_kv_heads=2, head_dim=8, num_experts=8, top_k=2, expert_size=16, dense_size=24, **fields)


# Qwen3-style dense layers between MoE layers, GPT-OSS-style alternating sliding and full attention.
MIXED = _config(7, moe_layer_flags=(True, False, True, True, False, True, False),
                sliding_windows=(4, None, 4, None, 4, None, 4), shared_expert_size=8)


def _params(config: ModelConfig, seed: int = 0):
    """Random parameters: norm scales near 1, everything else N(0, 0.3^2), so routing is not trivial."""
    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(MoeTransformer(config).init, jax.random.PRNGKey(0), IDS[:1])["params"]
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (float(path[-1].key == "scale") + 0.3 * rng.standard_normal(s.shape)).astype(np.float32),
        shapes)


def _dots(text: str) -> list[str]:
    return [line for line in text.splitlines() if "dot_general" in line]


def test_program_size_does_not_grow_with_depth():
    sizes, dots = {}, {}
    for n in (8, 48):
        model = MoeTransformer(_config(n, sliding_windows=(4, None) * (n // 2)))
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), IDS)["params"]
        start = time.perf_counter()
        lowered = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m)).lower(shapes, IDS, MASK)
        lowered.compile()
        print(f"{n} layers: lowered and compiled in {time.perf_counter() - start:.2f}s")
        text = lowered.as_text()
        sizes[n], dots[n] = len(text), len(_dots(text))
    assert dots[8] == dots[48] > 0
    assert sizes[48] < 1.05 * sizes[8]  # only the per-layer data (windows, MoE indices) grows


def test_layer_stacks_follow_the_layer_kinds():
    assert MIXED.layer_stacks == ((0,), (1,), (2, 3), (4,), (5,), (6,))
    assert _config(5).layer_stacks == ((0, 1, 2, 3, 4),)
    params = _params(MIXED)
    assert sorted(k for k in params if k.startswith("stack_")) == [f"stack_{j}" for j in range(6)]
    assert params["experts_2"]["gate_up"].shape == (2, 8, 32, 2, 16)  # outside the scan: read in place
    assert sorted(k for k in params if k.startswith("experts_")) == ["experts_0", "experts_2", "experts_4"]
    assert params["stack_1"]["mlp"]["up"]["kernel"].shape == (1, 32, 24)
    assert "router" in params["stack_0"]["moe"]  # trainable-router filters select by the "router" scope


def _params_read(fn, params) -> set[str]:
    """Paths of the parameters that the traced program of fn(params) reads."""
    jaxpr = jax.make_jaxpr(fn)(params).jaxpr
    used = {v for eqn in jaxpr.eqns for v in eqn.invars if isinstance(v, Var)} | set(jaxpr.outvars)
    paths = [jax.tree_util.keystr(path, simple=True, separator="/")
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return {path for path, var in zip(paths, jaxpr.invars) if var in used}


@pytest.mark.parametrize("config", [_config(4), MIXED], ids=["all_moe", "mixed"])
def test_analysis_mode_stops_at_the_last_router(config):
    calls = []

    def counting_dispatch(x, weights, index, p, act, layer):  # counts the expert FFNs that really run
        jax.debug.callback(lambda: calls.append(1))
        return expert_ffn(x, weights, index, p, act, "dense", layer)

    model = MoeTransformer(config, dispatch=counting_dispatch)
    params = _params(config)
    full = jax.jit(lambda p: model.apply({"params": p}, IDS, MASK))
    analysis = jax.jit(lambda p: model.apply({"params": p}, IDS, MASK, analysis_only=True).router_logits)
    want = jax.block_until_ready(full(params).router_logits)
    assert len(calls) == config.num_moe_layers
    calls.clear()
    np.testing.assert_allclose(jax.block_until_ready(analysis(params)), want, rtol=0, atol=1e-6)
    assert len(calls) == config.num_moe_layers - 1  # the last MoE layer's experts are skipped

    # No parameter after the last router is read: later stacks, the final norm and the LM head.
    last = next(j for j, layers in enumerate(config.layer_stacks) if config.moe_layers[-1] in layers)
    read = _params_read(lambda p: model.apply({"params": p}, IDS, MASK, analysis_only=True).router_logits, params)
    moe_stacks = [j for j in range(last + 1) if config.moe_layer_flags[config.layer_stacks[j][0]]]
    assert {path.split("/")[0] for path in read} == {"embed", *(f"stack_{j}" for j in range(last + 1)),
                                                     *(f"experts_{j}" for j in moe_stacks)}

    # ...and the compiled analysis program has no matmul with the vocabulary dimension (the LM head).
    head = re.compile(rf"\b{VOCAB}x|x{VOCAB}x")
    assert any(head.search(line) for line in _dots(full.lower(params).as_text()))
    assert not any(head.search(line) for line in _dots(analysis.lower(params).as_text()))


def _unrolled(config: ModelConfig, params, edit) -> jax.Array:
    """Reference: the decoder layers applied one at a time, each with its slice of the stacked parameters."""
    positions = np.maximum(MASK.cumsum(-1) - 1, 0)
    cos, sin = rope_tables(config, jnp.asarray(positions))
    ctx = LayerContext(cos, sin, jnp.arange(IDS.shape[1]), jnp.arange(IDS.shape[1]), jnp.asarray(MASK), None, edit)
    x = params["embed"][IDS]
    moe_index = np.cumsum(config.moe_layer_flags) - 1
    for j, layers in enumerate(config.layer_stacks):
        for local, i in enumerate(layers):
            layer_params = jax.tree.map(lambda a: a[local], params[f"stack_{j}"])
            data = LayerData(jnp.int32(config.sliding_windows[i] or 0), jnp.int32(moe_index[i]), jnp.int32(0), None,
                             None)
            experts = params.get(f"experts_{j}")  # the layer's experts, alone as a stack of one
            experts = None if experts is None else jax.tree.map(lambda a: a[local:local + 1], experts)
            x, _ = DecoderLayer(config, config.moe_layer_flags[i]).apply({"params": layer_params}, x, data,
                                                                          ctx._replace(experts=experts))
    x = Norm(config.norm, config.norm_eps).apply({"params": params["final_norm"]}, x)
    return Linear(config.vocab_size).apply({"params": params["lm_head"]}, x)


def test_mixed_layers_scan_like_one_layer_at_a_time():
    """Dense layers between MoE layers, alternating windows, and a per-MoE-layer edit all land on the right
    layer: the scanned model equals the layers applied one by one."""
    params = _params(MIXED)
    edit = steering.soft(MIXED.num_moe_layers, MIXED.num_experts, {1: [3], 3: [0, 5]}, 2.0)
    model = MoeTransformer(MIXED)
    out = jax.jit(lambda p, e: model.apply({"params": p}, IDS, MASK, edit=e))(params, edit)
    assert out.router_logits.shape == (MIXED.num_moe_layers, *IDS.shape, MIXED.num_experts)
    # float32 rounding only (one compiled program against ops run one by one, through 7 layers of N(0, 0.3^2)
    # weights): about 1e-5 here; a layer with the wrong weights, window or edit differs by O(0.1)
    np.testing.assert_allclose(out.logits, _unrolled(MIXED, params, edit), atol=3e-5)
    plain = model.apply({"params": params}, IDS, MASK)
    assert np.abs(np.asarray(out.logits - plain.logits)).max() > 1e-3  # the edit really steers
