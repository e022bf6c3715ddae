"""Dropless dispatch implementations agree with a NumPy loop over (token, expert) assignments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe.dispatch import expert_ffn
from moe.model import clamped_swiglu, swiglu


def _numpy_reference(x, w, idx, p, act):
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            g, u = x[t] @ p["gate"][e], x[t] @ p["up"][e]
            if "gate_bias" in p:
                g, u = g + p["gate_bias"][e], u + p["up_bias"][e]
            y = np.asarray(act(jnp.asarray(g), jnp.asarray(u))) @ p["down"][e]
            if "down_bias" in p:
                y = y + p["down_bias"][e]
            out[t] += w[t, j] * y
    return out


@pytest.mark.parametrize("mode", ["blocked", "ragged", "dense"])
@pytest.mark.parametrize("bias", [False, True])
def test_dispatch_matches_loop(mode, bias):
    rng = np.random.RandomState(0)
    t, d, f, e, k = 37, 16, 12, 6, 3
    x = rng.randn(t, d).astype(np.float32)
    logits = rng.randn(t, e)
    logits[:, 5] -= 100  # expert 5 never chosen: empty groups must work
    idx = np.argsort(-logits, -1)[:, :k].astype(np.int32)
    w = rng.rand(t, k).astype(np.float32)
    p = {"gate": rng.randn(e, d, f), "up": rng.randn(e, d, f), "down": rng.randn(e, f, d)}
    if bias:
        p |= {"gate_bias": rng.randn(e, f), "up_bias": rng.randn(e, f), "down_bias": rng.randn(e, d)}
    p = {n: v.astype(np.float32) for n, v in p.items()}
    act = clamped_swiglu(7.0, 1.702) if bias else swiglu
    got = jax.jit(lambda *a: expert_ffn(*a, act=act, mode=mode))(x, w, idx, p)
    np.testing.assert_allclose(np.asarray(got), _numpy_reference(x, w, idx, p, act), rtol=2e-5, atol=2e-4)


def test_blocked_handles_skew_across_many_blocks():
    """All tokens on one expert (many full blocks) plus one token elsewhere: nothing dropped."""
    from moe.dispatch import blocked_ffn
    rng = np.random.RandomState(1)
    t, d, f, e = 300, 8, 8, 4
    x = rng.randn(t, d).astype(np.float32)
    idx = np.zeros((t, 1), np.int32)
    idx[7] = 3
    w = np.ones((t, 1), np.float32)
    p = {n: rng.randn(*s).astype(np.float32) for n, s in
         {"gate": (e, d, f), "up": (e, d, f), "down": (e, f, d)}.items()}
    got = blocked_ffn(jnp.asarray(x), jnp.asarray(w), jnp.asarray(idx), p, swiglu, block=32)
    np.testing.assert_allclose(np.asarray(got), _numpy_reference(x, w, idx, p, swiglu), rtol=2e-5, atol=2e-4)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown dispatch mode"):
        expert_ffn(jnp.zeros((2, 4)), jnp.ones((2, 1)), jnp.zeros((2, 1), jnp.int32),
                   {"gate": jnp.zeros((2, 4, 3)), "up": jnp.zeros((2, 4, 3)), "down": jnp.zeros((2, 3, 4))},
                   swiglu, mode="magic")
