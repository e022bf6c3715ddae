"""Every dropless dispatch path equals a float64 NumPy loop over (token, expert) assignments to 1e-5 (float32),
on one layer's experts and on a layer stack read in place; megablox runs in the Pallas interpreter."""
from functools import partial

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from moe.dispatch import DISPATCH_MODES, block_rows, blocked_ffn, choose, expert_ffn, megablox_ffn
from moe.model import clamped_swiglu, swiglu

PATHS = {"blocked": partial(expert_ffn, mode="blocked"), "ragged": partial(expert_ffn, mode="ragged"),
         "dense": partial(expert_ffn, mode="dense"), "megablox": partial(megablox_ffn, interpret=True),
         # 16-row tiles: groups start and end inside tiles and span several of them
         "megablox-16": partial(megablox_ffn, interpret=True, tile_rows=16),
         # whatever `choose` picks on this backend
         "auto": partial(expert_ffn, mode="auto")}
TOL = 1e-5


def _np_act(bias: bool):
    """The activations in float64 NumPy: swiglu, or GPT-OSS's clamped swiglu (limit 7, alpha 1.702)."""
    if not bias:
        return lambda g, u: g / (1 + np.exp(-g)) * u
    return lambda g, u: (np.clip(u, -7, 7) + 1) * (np.minimum(g, 7) / (1 + np.exp(-1.702 * np.minimum(g, 7))))


def _numpy_reference(x, w, idx, p, bias):
    """float64 loop; p holds separate gate [E, D, F] and up [E, D, F] (the checkpoint's view)."""
    act, out = _np_act(bias), np.zeros(x.shape, np.float64)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            if e >= len(p["down"]):  # outside [0, E): expert parallelism's "another shard's expert"
                continue
            g, u = x[t] @ p["gate"][e], x[t] @ p["up"][e]
            if bias:
                g, u = g + p["gate_bias"][e], u + p["up_bias"][e]
            y = act(g, u) @ p["down"][e] + (p["down_bias"][e] if bias else 0)
            out[t] += w[t, j] * y
    return out


def _case(t, d, f, e, k, bias, rng, index=None):
    """Inputs (float32) and separate-projection params (float64); experts of index e - 1 are never chosen."""
    x = rng.randn(t, d)
    if index is None:
        logits = rng.randn(t, e)
        logits[:, e - 1] -= 100  # the last expert is never chosen: empty groups must work
        index = np.argsort(-logits, -1)[:, :k]
    w = rng.rand(t, index.shape[1])
    p = {"gate": 0.3 * rng.randn(e, d, f), "up": 0.3 * rng.randn(e, d, f), "down": 0.3 * rng.randn(e, f, d)}
    if bias:
        p |= {"gate_bias": rng.randn(e, f), "up_bias": rng.randn(e, f), "down_bias": rng.randn(e, d)}
    x, w = (np.asarray(a, np.float32).astype(np.float64) for a in (x, w))  # float32 values, exactly
    p = {n: np.asarray(v, np.float32).astype(np.float64) for n, v in p.items()}
    return x, w, index.astype(np.int32), p


def _fused(p):
    """The model's layout: gate_up [E, D, 2, F] (and gate_up_bias [E, 2, F]), float32."""
    fused = {"gate_up": np.stack([p["gate"], p["up"]], -2), "down": p["down"]}
    if "gate_bias" in p:
        fused |= {"gate_up_bias": np.stack([p["gate_bias"], p["up_bias"]], -2), "down_bias": p["down_bias"]}
    return {n: jnp.asarray(v, jnp.float32) for n, v in fused.items()}


def _run(path, x, w, idx, p, bias, layer=None):
    act = clamped_swiglu(7.0, 1.702) if bias else swiglu
    fn = jax.jit(lambda x, w, i, p, l: path(x, w, i, p, act, layer=l))
    return np.asarray(fn(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), idx, p, layer))


def _assert_close(got, want):
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() <= TOL * scale, (np.abs(got - want).max(), scale)


@pytest.mark.parametrize("mode", PATHS)
@pytest.mark.parametrize("bias", [False, True])
def test_dispatch_matches_loop(mode, bias):
    x, w, idx, p = _case(37, 16, 12, 6, 3, bias, np.random.RandomState(0))
    _assert_close(_run(PATHS[mode], x, w, idx, _fused(p), bias), _numpy_reference(x, w, idx, p, bias))


@pytest.mark.parametrize("mode", PATHS)
def test_layer_of_a_stack(mode):
    """With a stack [L, ...] and a traced layer index, each path computes that layer's experts."""
    rng = np.random.RandomState(2)
    x, w, idx, p0 = _case(29, 16, 8, 5, 2, True, rng)
    _, _, _, p1 = _case(29, 16, 8, 5, 2, True, rng, index=idx)
    stack = jax.tree.map(lambda a, b: jnp.stack([a, b]), _fused(p0), _fused(p1))
    for layer, p in enumerate((p0, p1)):
        _assert_close(_run(PATHS[mode], x, w, idx, stack, True, jnp.int32(layer)), _numpy_reference(x, w, idx, p, True))


@pytest.mark.parametrize("mode", PATHS)
def test_all_tokens_on_one_expert(mode):
    """All assignments on expert 0 (many full blocks / tiles), one token on expert 3, the rest empty."""
    rng = np.random.RandomState(1)
    index = np.zeros((300, 1), np.int32)
    index[7] = 3
    x, w, idx, p = _case(300, 8, 8, 4, 1, False, rng, index=index)
    _assert_close(_run(PATHS[mode], x, w, idx, _fused(p), False), _numpy_reference(x, w, idx, p, False))


@pytest.mark.parametrize("mode", PATHS)
def test_experts_outside_the_range_contribute_nothing(mode):
    """Assignments to expert E add nothing, even with a nonzero weight."""
    x, w, idx, p = _case(37, 16, 12, 6, 3, False, np.random.RandomState(8))
    idx = idx.copy()
    idx[::3, 0] = 6
    _assert_close(_run(PATHS[mode], x, w, idx, _fused(p), False), _numpy_reference(x, w, idx, p, False))


def test_blocked_block_sizes_and_skew():
    """Blocks smaller and larger than the groups give the same answer."""
    x, w, idx, p = _case(64, 8, 8, 4, 2, False, np.random.RandomState(3))
    want = _numpy_reference(x, w, idx, p, False)
    for block in (8, 32, 256):
        got = blocked_ffn(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(idx), _fused(p),
                          swiglu, block=block)
        _assert_close(np.asarray(got), want)


def test_block_rows_rule():
    assert block_rows(8192, 64) == 64  # OLMoE-shaped, 1k tokens, top-8: 128 rows per expert
    assert block_rows(8192, 128) == 64  # Qwen3-shaped: 64 rows per expert
    assert block_rows(8 * 8, 64) == 8  # decoding 8 sequences: about one row per expert
    assert block_rows(256 * 8, 128) == 16  # 256 tokens over 128 experts: 16 rows per expert
    assert block_rows(10**6, 8) == 64


def _shapes(jaxpr, loops_only: bool = False):
    """The shapes of every op's outputs in a jaxpr and the jaxprs nested in it (with loops_only, only inside
    scan, while and cond bodies)."""
    for eqn in jaxpr.eqns:
        if not loops_only:
            yield from (v.aval.shape for v in eqn.outvars)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            inside = eqn.primitive.name in ("scan", "while", "cond")
            yield from _shapes(sub, loops_only and not inside)


def test_blocked_reads_the_stack_in_place():
    """With a layer index, no op of the blocked path produces a whole layer's experts (no per-layer copy)."""
    x, w, idx, p = _case(16, 8, 4, 4, 2, False, np.random.RandomState(4))
    stack = jax.tree.map(lambda a: jnp.stack([a, a, a]), _fused(p))
    layer_shapes = {v.shape[1:] for v in stack.values()}
    jaxpr = jax.make_jaxpr(lambda s, l: blocked_ffn(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                                    jnp.asarray(idx), s, swiglu, layer=l))(stack, jnp.int32(1))
    assert not layer_shapes & set(_shapes(jaxpr.jaxpr))
    sliced = jax.make_jaxpr(lambda s, l: expert_ffn(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                                    jnp.asarray(idx), s, swiglu, "dense", l))(stack, jnp.int32(1))
    assert layer_shapes & set(_shapes(sliced.jaxpr))  # the check does see a per-layer slice where there is one


def test_blocked_gradient_touches_the_stack_once():
    """The blocked gradient builds a layer's expert gradients in its loops and writes them into a stack-shaped
    gradient once, outside them, as JAX transposes an indexing (XLA then folds it into a layer scan's running
    sum). A stack-shaped value inside the loops would cost a whole stack per layer: training time per layer
    grew with depth that way (2.7x from 2 to 16 layers, measured)."""
    x, w, idx, p = _case(16, 8, 4, 4, 2, False, np.random.RandomState(4))
    stack = jax.tree.map(lambda a: jnp.stack([a, a, a]), _fused(p))
    loss = lambda s: jnp.sum(blocked_ffn(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                         jnp.asarray(idx), s, swiglu, layer=jnp.int32(1)))
    jaxpr = jax.make_jaxpr(jax.grad(loss))(stack).jaxpr
    stack_shapes = {v.shape for v in stack.values()}
    assert stack_shapes <= set(_shapes(jaxpr))  # the gradient is there
    assert not stack_shapes & set(_shapes(jaxpr, loops_only=True))


def test_unknown_mode():
    assert set(PATHS) - {"megablox-16"} == set(DISPATCH_MODES)
    with pytest.raises(ValueError, match="unknown dispatch mode"):
        expert_ffn(jnp.zeros((2, 4)), jnp.ones((2, 1)), jnp.zeros((2, 1), jnp.int32),
                   {"gate_up": jnp.zeros((2, 4, 2, 3)), "down": jnp.zeros((2, 3, 4))}, swiglu, mode="magic")


@pytest.mark.parametrize("layer", [None, 1])
def test_mixed_precision_computes_in_the_activation_dtype(layer):
    """float32 experts (one layer or a stack) with bfloat16 activations: the layer's experts are cast to
    bfloat16, as the model's Linear layers cast their kernels, and the output is bfloat16."""
    x, w, idx, p = _case(24, 8, 8, 4, 2, False, np.random.RandomState(5))
    fused = _fused(p)
    stack = fused if layer is None else jax.tree.map(lambda a: jnp.stack([a * 0, a]), fused)
    x16 = jnp.asarray(x, jnp.bfloat16)
    got = expert_ffn(x16, jnp.asarray(w, jnp.float32), jnp.asarray(idx), stack, swiglu, "blocked", layer)
    want = expert_ffn(x16, jnp.asarray(w, jnp.float32), jnp.asarray(idx),
                      {k: v.astype(jnp.bfloat16) for k, v in fused.items()}, swiglu, "blocked")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    ref = _numpy_reference(np.asarray(x16, np.float64), w, idx, p, False)
    assert np.abs(np.asarray(got, np.float64) - ref).max() <= 0.05 * max(1.0, np.abs(ref).max())


def test_auto_runs_the_chosen_path():
    """On CPU, "auto" is bit for bit the blocked path."""
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU rule")
    x, w, idx, p = _case(40, 16, 8, 6, 2, False, np.random.RandomState(6))
    run = {mode: _run(partial(expert_ffn, mode=mode), x, w, idx, _fused(p), False)
           for mode in ("auto", "blocked", "dense")}
    np.testing.assert_array_equal(run["auto"], run["blocked"])
    assert np.abs(run["blocked"] - run["dense"]).max() > 0  # the two paths are told apart


def test_choose_by_backend():
    """Blocked on CPU, for inference and training: faster than dense, or tied, on every shape that
    `scripts/benchmark.py --dispatch-sweep` measured (README, "Benchmark"); by backend elsewhere."""
    assert [choose(b) for b in ("cpu", "gpu", "tpu", "other")] == ["blocked", "dense", "megablox", "ragged"]


def _gradients(path, x, w, idx, p, cotangent, bias, layer, dtype):
    """Gradients of sum(cotangent * expert_ffn(...)) w.r.t. x, the routing weights and the expert stack."""
    act = clamped_swiglu(7.0, 1.702) if bias else swiglu

    def loss(x, w, p):
        return jnp.sum(path(x, w, jnp.asarray(idx), p, act, layer=layer).astype(dtype) * cotangent)

    cast = partial(jax.tree.map, lambda a: jnp.asarray(a, dtype))
    return jax.tree.map(np.asarray, jax.jit(jax.grad(loss, (0, 1, 2)))(*cast((x, w, p))))


@pytest.mark.parametrize("mode", PATHS)
@pytest.mark.parametrize("case", ["spread", "one expert", "few tokens"])
def test_gradients_match_the_float64_dense_gradient(mode, case):
    """Every path's gradient w.r.t. x, the routing weights and the experts (biases included) equals the dense
    formula's, differentiated in float64, to 1e-5: layer 1 of a stack with an empty expert and partial blocks
    ("spread"), and with all assignments but one on one expert (many full blocks, several empty experts); one
    layer's experts with fewer tokens than a block ("few tokens")."""
    rng = np.random.RandomState(7)
    shape = {"spread": (37, 6, 3), "one expert": (150, 4, 1), "few tokens": (5, 6, 3)}[case]
    index = None
    if case == "one expert":
        index = np.zeros((150, 1), np.int32)
        index[5] = 2
    x, w, idx, p0 = _case(shape[0], 16, 12, shape[1], shape[2], True, rng, index=index)
    _, _, _, p1 = _case(shape[0], 16, 12, shape[1], shape[2], True, rng, index=idx)
    stack = jax.tree.map(lambda a, b: np.stack([a, b]), _fused(p0), _fused(p1))
    experts, layer = (_fused(p0), None) if case == "few tokens" else (stack, jnp.int32(1))
    cotangent = rng.randn(*x.shape)
    with jax.enable_x64(True):
        want = _gradients(partial(expert_ffn, mode="dense"), x, w, idx, experts, cotangent, True, layer, jnp.float64)
    got = _gradients(PATHS[mode], x, w, idx, experts, cotangent, True, layer, jnp.float32)
    for g, ref in zip(got, want):
        for leaf, ref_leaf in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
            _assert_close(leaf, ref_leaf)
    if layer is not None:
        assert not any(np.any(a[0]) for a in jax.tree.leaves(got[2]))  # layer 0 of the stack gets no gradient
