"""Sharded runs equal single-device runs. Needs 8 devices: tests/moe/test_sharding.py runs this module in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (pytest does not collect it otherwise)."""
import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import moe
from moe.config import ModelConfig
from moe.dispatch import expert_ffn, megablox_ffn
from moe.expert_parallel import ExpertParallel, expert_parallel_ffn
from moe.generate import generate
from moe.model import MoeTransformer, clamped_swiglu
from moe.sharding import make_mesh, param_shardings, shard_batch, shard_params
from routing.stats import sequence_statistics
from routing.steering import soft
from tests.helpers.hf_reference import tiny_model

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
TOL = 1e-5
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]  # (data, expert, model)
CONFIG = ModelConfig(family="tiny", vocab_size=64, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                     head_dim=8, num_experts=8, top_k=2, expert_size=16, dense_size=24, shared_expert_size=8,
                     moe_layer_flags=(True, False, True), sliding_windows=(4, None, None), expert_bias=True,
                     qkv_bias=True, expert_activation="clamped_swiglu")


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _run(model, params, ids, mask, edit):
    """Logits, router logits, routing statistics, steered logits and analysis mode's router logits in one
    compiled function."""
    def run(params, ids, mask, edit):
        out = model.apply({"params": params}, ids, mask)
        steered = model.apply({"params": params}, ids, mask, edit=edit)
        stats = sequence_statistics(out.router_logits, mask, model.config.top_k, num_pairs=8)
        analysis = model.apply({"params": params}, ids, mask, analysis_only=True)
        return out.logits, out.router_logits, stats, steered.logits, analysis.router_logits
    return jax.jit(run)(params, ids, mask, edit)


@pytest.fixture(scope="module")
def reference():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, CONFIG.vocab_size, (8, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = mask[5, :6] = 0
    shapes = jax.eval_shape(MoeTransformer(CONFIG).init, jax.random.PRNGKey(0), ids[:1])["params"]
    params = jax.tree_util.tree_map_with_path(  # norm scales near 1, everything else N(0, 0.2^2)
        lambda path, s: (float(path[-1].key == "scale") + 0.2 * rng.standard_normal(s.shape)).astype(np.float32),
        shapes)
    edit = soft(CONFIG.num_moe_layers, CONFIG.num_experts, {0: [1, 5], 1: [2]}, 1.5)
    return params, ids, mask, edit, _run(MoeTransformer(CONFIG), params, ids, mask, edit)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_forward_stats_and_steering_match_single_device(reference, shape):
    params, ids, mask, edit, expected = reference
    mesh = make_mesh(*shape)
    sharded = shard_params(params, mesh)
    assert sharded["experts_0"]["gate_up"].sharding.spec == P(None, "expert", None, None, "model")
    got = _run(MoeTransformer(CONFIG, dispatch=ExpertParallel(mesh)), sharded, shard_batch(ids, mesh),
               shard_batch(mask, mesh), edit)
    assert _max_diff(got[3], expected[0]) > 1e-3  # the edit really steers
    names = ("logits", "router logits", "statistics", "steered logits", "analysis router logits")
    for name, a, b in zip(names, got, expected):
        diff = _max_diff(a, b)
        print(f"mesh {shape}: {name} max |diff| {diff:.2e}")
        assert diff < TOL, (name, diff)


def test_generation_matches_single_device(reference):
    params, ids, mask, edit, _ = reference
    mesh = make_mesh(2, 4, 1)
    want = generate(MoeTransformer(CONFIG), params, ids, mask, max_new_tokens=3, edit=edit)
    got = generate(MoeTransformer(CONFIG, dispatch=ExpertParallel(mesh)), shard_params(params, mesh),
                   shard_batch(ids, mesh), shard_batch(mask, mesh), max_new_tokens=3, edit=edit)
    np.testing.assert_array_equal(got.tokens, want.tokens)


@pytest.mark.parametrize("mode", ["blocked", "ragged", "dense", "megablox"])
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 8, 1)])
def test_each_inner_dispatch(mode, mesh_shape):
    """Expert-parallel dispatch over a layer stack, with each kernel on each device (megablox interpreted),
    equals the single-device dispatch, and so does its gradient (w.r.t. the tokens, the routing weights and
    the stack); with 8 experts over 8 devices, some devices' experts are empty."""
    rng = np.random.RandomState(1)
    t, d, f, e, k, layers = 32, 16, 8, 8, 3, 2
    x = jnp.asarray(rng.randn(t, d), jnp.float32)
    logits = rng.randn(t, e)
    logits[:, 6:] -= 100  # experts 6 and 7 are never chosen
    index = jnp.asarray(np.argsort(-logits, -1)[:, :k], jnp.int32)
    weights = jnp.asarray(rng.rand(t, k), jnp.float32)
    shapes = {"gate_up": (layers, e, d, 2, f), "down": (layers, e, f, d), "gate_up_bias": (layers, e, 2, f),
              "down_bias": (layers, e, d)}
    p = {n: jnp.asarray(0.3 * rng.randn(*s), jnp.float32) for n, s in shapes.items()}
    act = clamped_swiglu(7.0, 1.702)
    inner = partial(megablox_ffn, interpret=True) if mode == "megablox" else mode
    layer = jnp.int32(1)
    mesh = make_mesh(*mesh_shape)
    cotangent = jnp.asarray(rng.randn(t, d), jnp.float32)
    runs = {"single": lambda x, w, p: expert_ffn(x, w, index, p, act, "dense", layer),
            "parallel": lambda x, w, p: expert_parallel_ffn(x, w, index, p, act, mesh, inner, layer)}
    want, got = (jax.jit(lambda x, w, p, f=f: (f(x, w, p), jax.grad(lambda *a: jnp.sum(f(*a) * cotangent),
                                                                      (0, 1, 2))(x, w, p)))(x, weights, p)
                 for f in runs.values())
    assert _max_diff(got[0], want[0]) < TOL
    assert _max_diff(got[1], want[1]) < TOL * max(1.0, _max_diff(want[1], jax.tree.map(jnp.zeros_like, want[1])))


def _assert_placed(params, config, mesh):
    expected = param_shardings(config, mesh)
    for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(expected)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (jax.tree_util.keystr(path), leaf.sharding, want)


def test_from_pretrained_places_sharded_arrays(tmp_path):
    hf = tiny_model("olmoe", num_hidden_layers=2)
    hf.save_pretrained(tmp_path / "hf")
    model, params = moe.from_pretrained(tmp_path / "hf")
    mesh = make_mesh(2, 2, 2)
    sharded_model, sharded = moe.from_pretrained(tmp_path / "hf", mesh=mesh)
    _assert_placed(sharded, model.config, mesh)
    assert sharded["experts_0"]["down"].sharding.spec == P(None, "expert", "model", None)
    assert _max_diff(sharded, params) == 0.0
    assert sharded_model.dispatch == ExpertParallel(mesh, "auto")

    moe.save_converted(tmp_path / "converted", model.config, sharded)
    other = make_mesh(1, 8, 1)
    _, restored = moe.from_pretrained(tmp_path / "converted", mesh=other)
    _assert_placed(restored, model.config, other)
    assert restored["experts_0"]["gate_up"].sharding.mesh.shape["expert"] == 8
    assert _max_diff(restored, params) == 0.0


def test_bad_meshes_name_the_sizes(tmp_path):
    with pytest.raises(ValueError, match=r"data=3 x expert=2 x model=1 = 6 devices, but there are 8"):
        make_mesh(3, 2, 1)
    with pytest.raises(ValueError, match=r"expert=3 x model=1 does not divide the 8 devices"):
        make_mesh(expert=3)
    six = dataclasses.replace(CONFIG, num_experts=6)
    with pytest.raises(ValueError, match="expert axis size 4 does not divide the number of experts 6"):
        param_shardings(six, make_mesh(2, 4, 1))
    tiny_model("olmoe", num_hidden_layers=1, num_experts=6).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="expert axis size 4 does not divide the number of experts 6"):
        moe.from_pretrained(tmp_path, mesh=make_mesh(2, 4, 1))
    with pytest.raises(ValueError, match=r"token count \(batch x seq = 6\) divisible by data x expert = 8"):
        expert_parallel_ffn(jnp.zeros((6, 4)), jnp.zeros((6, 1)), jnp.zeros((6, 1), jnp.int32),
                            {"gate_up": jnp.zeros((8, 4, 2, 2)), "down": jnp.zeros((8, 2, 4))},
                            clamped_swiglu(7.0, 1.702), make_mesh(1, 8, 1))
