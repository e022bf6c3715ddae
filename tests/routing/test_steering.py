"""Routing edits against a NumPy reference, neutrality, tracing, vmap and validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe import ModelConfig, MoeTransformer
from routing import steering
from routing.window import Window

L, E = 4, 8


def _logits(seed=0, shape=(2, 5, E), scale=3.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


def _reference(z, strength, on, off, eps):
    """NumPy reference for one layer's row: soft with population std, then hard from pre-forcing max/min."""
    z = z.astype(np.float64)
    out = z + strength * z.std(axis=-1, keepdims=True)
    hi, lo = out.max(-1, keepdims=True), out.min(-1, keepdims=True)
    out = np.where(on, hi + eps, out)
    return np.where(off, lo - eps, out)


def _bits(x):
    """Raw bit patterns, so that -0.0 and NaN payloads count."""
    x = jnp.asarray(x)
    return np.asarray(jax.lax.bitcast_convert_type(x, jnp.uint16 if x.dtype == jnp.bfloat16 else jnp.uint32))


def test_soft_matches_numpy():
    z = _logits()
    edit = steering.soft(L, E, [(1, 2), (1, 5)], 0.5)
    out = np.asarray(edit(jnp.asarray(z), 1))
    strength = np.zeros(E)
    strength[[2, 5]] = 0.5
    np.testing.assert_allclose(out, _reference(z, strength, False, False, 0.01), rtol=1e-6, atol=1e-6)
    assert np.array_equal(_bits(out[..., [0, 1, 3, 4, 6, 7]]), _bits(z[..., [0, 1, 3, 4, 6, 7]]))
    assert np.array_equal(_bits(edit(jnp.asarray(z), 0)), _bits(z))


def test_hard_uses_original_max_and_min():
    z = _logits(1)
    on = steering.force_on(L, E, {2: [0, 3]})
    off = steering.force_off(L, E, {2: [1, 3, 4]}, eps=0.25)
    expected = _reference(z, 0.0, np.isin(np.arange(E), [0, 3]), False, 0.01)
    np.testing.assert_allclose(on(jnp.asarray(z), 2), expected, rtol=1e-6)
    # expert 3 is forced both ways: off wins; the largest eps of the merge is used
    both = on + off
    mask_on, mask_off = np.isin(np.arange(E), [0, 3]), np.isin(np.arange(E), [1, 3, 4])
    np.testing.assert_allclose(both(jnp.asarray(z), 2), _reference(z, 0.0, mask_on, mask_off, 0.25), rtol=1e-6)


def test_composition_merges_simultaneously_and_chain_sequences():
    z = _logits(2)
    a = steering.soft(L, E, [(0, 1), (0, 2)], 0.5)
    b = steering.soft(L, E, [(0, 2)], -0.2) + steering.force_on(L, E, [(0, 6)])
    merged = steering.compose(a, b)
    strength = np.zeros(E)
    strength[1], strength[2] = 0.5, 0.3
    np.testing.assert_allclose(
        merged(jnp.asarray(z), 0), _reference(z, strength, np.arange(E) == 6, False, 0.01), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(merged.strength, steering.compose(b, a).strength)
    chained = steering.chain(a, b)
    np.testing.assert_allclose(chained(jnp.asarray(z), 0), b(a(jnp.asarray(z), 0), 0), rtol=0, atol=0)
    with pytest.raises(TypeError):
        steering.compose(a, chained)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_empty_edit_is_bit_identical(dtype):
    z = jnp.asarray(_logits(3, scale=1e30)).astype(dtype)
    z = z.at[0, 0, :3].set(jnp.array([-0.0, jnp.inf, -jnp.inf], dtype)).at[1, 1, 4].set(jnp.nan)
    z = z.at[0, 1].set(-0.0)
    for layer in range(L):
        out = steering.empty(L, E)(z, layer)
        assert out.dtype == z.dtype and out.shape == z.shape
        assert np.array_equal(_bits(out), _bits(z))
    # untouched experts stay bit-identical under a real edit too
    edit = steering.soft(L, E, [(1, 7)], 0.5) + steering.force_off(L, E, [(1, 6)])
    out = jax.jit(edit.__call__, static_argnums=1)(z, 1)
    assert np.array_equal(_bits(out[..., :6]), _bits(z[..., :6]))


def test_with_strength_zero_is_neutral():
    z = jnp.asarray(_logits(4)).at[0, 0, 2].set(-0.0)
    edit = steering.with_strength(steering.soft(L, E, [(0, 2)], 0.5), 0.0)
    assert np.array_equal(_bits(edit(z, 0)), _bits(z))


def test_jit_does_not_retrace_for_new_strength_or_experts():
    traces = []

    @jax.jit
    def f(z, edit):
        traces.append(1)
        return jax.lax.fori_loop(0, L, lambda layer, acc: acc + edit(z, layer), jnp.zeros_like(z))

    z = jnp.asarray(_logits(5))
    edits = [
        steering.empty(L, E),
        steering.soft(L, E, [(0, 1)], 0.5),
        steering.soft(L, E, {1: [2, 3], 3: [7]}, -0.3, eps=0.5),
        steering.force_on(L, E, [(2, 2)]),
        steering.force_off(L, E, [(2, 2)]) + steering.soft(L, E, [(0, 0)], 1.0),
        steering.window(steering.soft(L, E, [(0, 1), (3, 1)], 0.5), range(1, 3)),
    ]
    for edit in edits:
        expected = sum(np.asarray(edit(z, layer)) for layer in range(L))
        np.testing.assert_allclose(f(z, edit), expected, rtol=1e-6, atol=1e-5)
    assert len(traces) == 1


def test_logit_function_static_field():
    traces = []

    @jax.jit
    def f(z, edit):
        traces.append(1)
        return edit(z, 0)

    z = jnp.asarray(_logits(6))
    double = steering.LogitFunction(lambda x, layer: x * 2)
    f(z, double)
    f(z, steering.LogitFunction(double.fn))
    assert len(traces) == 1
    f(z, steering.LogitFunction(lambda x, layer: x + 1))
    assert len(traces) == 2
    chained = steering.chain(steering.soft(L, E, [(0, 1)], 0.5), double.fn)
    np.testing.assert_allclose(f(z, chained), 2 * np.asarray(steering.soft(L, E, [(0, 1)], 0.5)(z, 0)), rtol=1e-6)
    with pytest.raises(ValueError, match="returned"):
        steering.LogitFunction(lambda x, layer: x[..., :2])(z, 0)


def test_vmap_over_strength_matches_loop():
    z = jnp.asarray(_logits(7))
    base = steering.soft(L, E, {1: [0, 4]}, 1.0)
    lams = jnp.array([-1.0, 0.0, 0.5, 2.0])
    batched = jax.vmap(lambda lam: steering.with_strength(base, lam)(z, 1))(lams)
    via_soft = jax.vmap(lambda lam: steering.soft(L, E, {1: [0, 4]}, lam)(z, 1))(lams)
    for i, lam in enumerate(lams):
        loop = steering.with_strength(base, float(lam))(z, 1)
        np.testing.assert_array_equal(batched[i], loop)
        np.testing.assert_array_equal(via_soft[i], loop)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forced_experts_always_in_or_out_of_top_k(dtype):
    k = 2
    z = jnp.asarray(_logits(8, shape=(16, 32, E), scale=40.0)).astype(dtype)
    z = z.at[0, 0].set(jnp.full(E, 300.0, dtype))  # all tied, where bfloat16 rounds max + eps to max
    edit = steering.force_on(L, E, [(3, 5), (3, 6)]) + steering.force_off(L, E, [(3, 0), (3, 1)])
    edit = edit + steering.soft(L, E, [(3, 2)], 3.0)  # a strong soft push must not beat forcing
    _, idx = jax.lax.top_k(edit(z, 3), k)
    assert set(np.unique(np.asarray(idx))) == {5, 6}
    _, idx = jax.lax.top_k(edit(z, 3), E - 2)
    assert not np.isin(np.asarray(idx), [0, 1]).any()


def test_traced_layer_index_matches_python_int():
    z = jnp.asarray(_logits(9))
    edit = steering.soft(L, E, [(0, 1), (2, 3)], 0.7) + steering.force_on(L, E, [(3, 4)])
    _, scanned = jax.lax.scan(lambda c, layer: (c, edit(z, layer)), None, jnp.arange(L, dtype=jnp.int32))
    for layer in range(L):
        np.testing.assert_allclose(scanned[layer], edit(z, layer), rtol=1e-6, atol=1e-6)


def test_window():
    edit = steering.soft(L, E, [(0, 1), (1, 1), (3, 2)], 0.5, layers=[1, 2, 3])
    assert np.flatnonzero(np.asarray(edit.strength).any(1)).tolist() == [1, 3]
    w = steering.window(steering.force_on(L, E, [(0, 1), (2, 1)]), [2])
    assert np.asarray(w.force_on).sum() == 1 and w.force_on[2, 1] == 1
    by_window = steering.soft(L, E, [(0, 1), (1, 1), (2, 1), (3, 2)], 0.5, layers=Window(1, 3))  # layers 1, 2, 3
    assert np.flatnonzero(np.asarray(by_window.strength).any(1)).tolist() == [1, 2, 3]
    inside = steering.window(steering.soft(L, E, {0: [1], 1: [1], 2: [1], 3: [2]}, 0.5), Window(0, 2))
    assert np.flatnonzero(np.asarray(inside.strength).any(1)).tolist() == [0, 1, 2]


def test_constructors_take_a_model_config_or_a_model():
    config = ModelConfig(family="olmoe", vocab_size=16, hidden_size=8, num_layers=L, num_heads=2, num_kv_heads=2,
                         head_dim=4, num_experts=E, top_k=2, expert_size=8)
    selection = {1: [2, 5], 3: [0]}
    for shape in (config, MoeTransformer(config)):
        for by_shape, by_sizes in (
                (steering.empty(shape), steering.empty(L, E)),
                (steering.soft(shape, selection, 0.5, layers=[1]), steering.soft(L, E, selection, 0.5, layers=[1])),
                (steering.force_on(shape, selection, eps=0.2), steering.force_on(L, E, selection, eps=0.2)),
                (steering.force_off(shape, selection, key=3), steering.force_off(L, E, selection, key=3))):
            for a, b in zip(jax.tree_util.tree_leaves(by_shape), jax.tree_util.tree_leaves(by_sizes)):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(steering.selection_mask(shape, selection),
                                      steering.selection_mask(L, E, selection))
    with pytest.raises(ValueError, match="num_moe_layers must be a positive integer, got 'model'"):
        steering.empty("model", E)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: steering.soft(L, E, [(L, 0)], 0.5), rf"layer {L} out of range \[0, {L}\)"),
        (lambda: steering.force_on(L, E, {0: [E]}), rf"expert {E} out of range \[0, {E}\)"),
        (lambda: steering.force_off(L, E, [(-1, 0)]), r"layer -1 out of range"),
        (lambda: steering.soft(L, E, [], 0.5), "empty selection"),
        (lambda: steering.soft(L, E, {1: []}, 0.5), "empty selection"),
        (lambda: steering.soft(L, E, [(0, 1)], 0.5, layers=[2]), r"no selected expert lies in layers \[2\]"),
        (lambda: steering.soft(L, E, [(0, 1)], 0.5, layers=[9]), "layer 9 out of range"),
        (lambda: steering.soft(L, E, [(0, 1.5)], 0.5), "expert must be an integer"),
        (lambda: steering.soft(L, E, [(0, 1, 2)], 0.5), "pairs"),
        (lambda: steering.soft(L, E, [(0, 1)], float("nan")), "lam must be finite"),
        (lambda: steering.force_on(L, E, [(0, 1)], eps=0.0), "eps and eps_std are both 0"),
        (lambda: steering.force_on(L, E, [(0, 1)], eps=-0.1), "eps must be finite and >= 0"),
        (lambda: steering.force_off(L, E, [(0, 1)], eps_std=float("inf")), "eps_std must be finite"),
        (lambda: steering.force_on(L, E, [(0, 1)], key=jnp.zeros(3, jnp.uint32)), "key must be a seed"),
        (lambda: steering.soft(L, E, [(0, 1)], 1e39), r"lam must be finite in float32 .* got 1e\+39"),
        (lambda: steering.soft(L, E, [(0, 1)], -np.float64(4e38)), "lam must be finite in float32"),
        (lambda: steering.soft(L, E, [(0, 1)], jnp.array(jnp.inf)), "lam must be finite in float32"),
        (lambda: steering.with_strength(steering.soft(L, E, [(0, 1)], 0.5), np.nan), "lam must be finite"),
        (lambda: steering.soft(L, E, [(0, 1)], 3e38) + steering.soft(L, E, [(0, 1)], 3e38),
         "steering strength must be finite in float32 .* 1 non-finite"),
        (lambda: steering.force_on(L, E, [(0, 1)], eps=1e39), "eps must be finite in float32"),
        (lambda: steering.chain(steering.empty(L, E), steering.empty(L + 1, E)), r"different numbers .* \[4, 5\]"),
        (lambda: steering.empty(0, E), "num_moe_layers"),
        (lambda: steering.window(steering.empty(L, E), [L]), "out of range"),
        (lambda: steering.empty(L, E)(jnp.zeros((1, E)), L), rf"moe_layer {L} out of range"),
        (lambda: steering.empty(L, E)(jnp.zeros((1, E + 1)), 0), "experts"),
        (lambda: steering.compose(steering.empty(L, E), steering.empty(L + 1, E)), "shapes differ"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _hard_reference(z, on, off, offset):
    """Forced values from the pre-forcing max/min, nudged one ulp past them when the offset does not move them."""
    hi, lo = z.max(-1, keepdims=True), z.min(-1, keepdims=True)
    up = np.maximum((hi + offset).astype(z.dtype), np.nextafter(hi, np.inf))
    down = np.minimum((lo - offset).astype(z.dtype), np.nextafter(lo, -np.inf))
    return np.where(off, down, np.where(on, up, z))


def test_paper_eps_is_a_fresh_normal_draw_per_token_and_expert():
    z = _logits(10, shape=(64, 32, E))
    on, off = np.isin(np.arange(E), [1, 2]), np.isin(np.arange(E), [5])
    edit = (steering.force_on(L, E, {2: [1, 2]}, **steering.PAPER_EPS, key=7)
            + steering.force_off(L, E, {2: [5]}, eps=1e-9))
    assert edit.eps == np.float32(1e-9) and edit.eps_std == np.float32(1e-6)  # the larger of each
    draws = np.asarray(steering.token_normals(edit.key, 2, jnp.asarray(z)))
    assert abs(draws.mean()) < 0.02 and abs(draws.std() - 1) < 0.02  # 16384 draws of N(0, 1)
    assert np.corrcoef(draws[..., 1].ravel(), draws[..., 2].ravel())[0, 1] < 0.05  # experts drawn apart
    out = np.asarray(edit(jnp.asarray(z), 2))
    offset = np.float32(1e-9) + np.float32(1e-6) * draws  # float32 arithmetic, as in the edit
    np.testing.assert_array_equal(out, _hard_reference(z, on, off, offset))
    assert len(np.unique(draws[..., 1])) == draws[..., 1].size  # a fresh draw for every token
    above = np.mean(out[..., 1] > out[..., 2])
    assert 0.2 < above < 0.8 and np.mean(out[..., 2] > out[..., 1]) > 0.2  # forced experts in random order
    # another key or layer draws anew; the same token anywhere in the batch draws the same
    other_key = steering.force_on(L, E, {2: [1, 2]}, **steering.PAPER_EPS, key=8)
    assert not np.array_equal(steering.token_normals(other_key.key, 2, jnp.asarray(z)), draws)
    assert not np.array_equal(steering.token_normals(edit.key, 1, jnp.asarray(z)), draws)
    moved = np.roll(z, 5, axis=1)[::-1]
    np.testing.assert_array_equal(edit(jnp.asarray(moved), 2), np.roll(out, 5, axis=1)[::-1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_paper_eps_keeps_forced_experts_strictly_above_and_below(dtype):
    z = jnp.asarray(_logits(11, shape=(32, 32, E), scale=40.0)).astype(dtype)
    z = z.at[0, 0].set(jnp.full(E, 300.0, dtype)).at[0, 1, :4].set(jnp.full(4, -2.0, dtype))  # ties
    edit = (steering.force_on(L, E, [(3, 5), (3, 6)], **steering.PAPER_EPS)
            + steering.force_off(L, E, [(3, 0), (3, 1)], **steering.PAPER_EPS))
    out = np.asarray(edit(z, 3).astype(jnp.float32))
    unforced = out[..., [2, 3, 4, 7]]
    assert (out[..., [5, 6]].min(-1) > unforced.max(-1)).all()
    assert (out[..., [0, 1]].max(-1) < unforced.min(-1)).all()


def test_switching_between_fixed_and_random_eps_does_not_recompile():
    traces = []

    @jax.jit
    def f(z, edit):
        traces.append(1)
        return edit(z, 1)

    z = jnp.asarray(_logits(12))
    outputs = [f(z, steering.force_on(L, E, [(1, 3)], **kwargs))
               for kwargs in ({}, steering.PAPER_EPS, {**steering.PAPER_EPS, "key": 1}, {"eps": 0.5, "eps_std": 0.1})]
    assert len(traces) == 1
    assert len({np.asarray(o)[..., 3].tobytes() for o in outputs}) == 4


def test_model_refuses_an_edit_for_another_number_of_moe_layers():
    from moe.generate import generate

    config = ModelConfig(family="olmoe", vocab_size=16, hidden_size=8, num_layers=2, num_heads=2, num_kv_heads=2,
                         head_dim=4, num_experts=E, top_k=2, expert_size=8)
    model = MoeTransformer(config)
    ids = jnp.array([[1, 2, 3]])
    params = model.init(jax.random.PRNGKey(0), ids)["params"]
    forward = jax.jit(lambda edit: model.apply({"params": params}, ids, edit=edit).logits)
    for layers in (4, 1):
        edit = steering.soft(layers, E, [(0, 1)], 0.5)
        for run in (lambda: model.apply({"params": params}, ids, edit=edit), lambda: forward(edit),
                    lambda: generate(model, params, ids, max_new_tokens=2, edit=edit),
                    lambda: forward(steering.chain(edit, lambda z, layer: z))):
            with pytest.raises(ValueError, match=f"built for {layers} MoE layers; this model has 2"):
                run()
    steered = forward(steering.soft(2, E, [(1, 1)], 5.0))
    assert not np.array_equal(np.asarray(steered), np.asarray(forward(None)))  # a fitting edit steers
    assert np.array_equal(np.asarray(forward(steering.chain(lambda z, layer: z))), np.asarray(forward(None)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_huge_finite_strength_saturates_instead_of_making_nan(dtype):
    z = jnp.asarray(_logits(13)).astype(dtype)
    out = np.asarray(steering.soft(L, E, [(1, 2)], 3e38)(z, 1).astype(jnp.float32))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[..., 2], np.float32(jnp.finfo(dtype).max))
    assert (out[..., 2:3] > np.delete(out, 2, axis=-1)).all()
    probs = np.asarray(jax.nn.softmax(jnp.asarray(out), axis=-1))
    np.testing.assert_allclose(probs[..., 2], 1.0)
