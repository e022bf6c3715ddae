"""The generic training step: loss goes down, exact resumption, router-only masking, aux losses vs NumPy."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moe import ModelConfig, MoeTransformer
from moe.train import (checkpoint_manager, cross_entropy, fit, init_state, load_balancing_loss, make_train_step,
                       masked_optimizer, param_path, router_only, router_z_loss)

REPO = Path(__file__).resolve().parents[2]
CONFIG = ModelConfig(family="olmoe", vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2,
                     head_dim=8, num_experts=4, top_k=2, expert_size=16)
MODEL = MoeTransformer(CONFIG, dispatch="dense")


def _params():
    return MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]


def _batch_at(step: int) -> dict:
    """Learnable data: counting sequences mod 16 from a step-dependent start, some rows right-padded."""
    rng = np.random.default_rng(step)
    start = rng.integers(0, 16, (4, 1))
    ids = ((start + np.arange(12)) % 16 + 1).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    return {"input_ids": jnp.asarray(ids * mask), "attention_mask": jnp.asarray(mask)}


def _leaves(tree) -> dict[str, np.ndarray]:
    return {param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def adam():
    """One optimizer and compiled step shared by the tests below (compiling is most of their time)."""
    opt = optax.adam(1e-2)
    return opt, make_train_step(MODEL, opt)


def test_training_reduces_loss(adam):
    opt, step = adam
    _, history = fit(init_state(_params(), opt), step, _batch_at, 40, progress=False)
    losses = [h["cross_entropy"] for h in history]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_blocked_training_step_equals_dense():
    """The whole model's training step (every loss term, the layer scan reading the stacked experts) moves the
    parameters alike with blocked dispatch (its own blocked gradient) and dense: one SGD step of rate 1 is
    minus the gradient. Compared to 1e-5 of each parameter's largest step, plus the rounding of new - old."""
    opt, start = optax.sgd(1.0), _leaves(_params())
    moved = {}
    for mode in ("dense", "blocked"):
        state, _ = make_train_step(MODEL.clone(dispatch=mode), opt)(init_state(_params(), opt), _batch_at(0))
        moved[mode] = {name: value - start[name] for name, value in _leaves(state.params).items()}
    assert any("experts" in name for name in moved["dense"])
    for name, step in moved["dense"].items():
        tolerance = 1e-5 * np.abs(step).max() + 2 * np.spacing(np.abs(start[name]).max())
        np.testing.assert_allclose(moved["blocked"][name], step, rtol=0, atol=tolerance, err_msg=name)


def test_resuming_from_a_checkpoint_continues_identically(tmp_path, adam):
    opt, step = adam
    straight, history = fit(init_state(_params(), opt), step, _batch_at, 6, progress=False)
    manager = checkpoint_manager(tmp_path / "ckpt")
    fit(init_state(_params(), opt), step, _batch_at, 3, manager=manager, progress=False)
    manager.close()
    manager = checkpoint_manager(tmp_path / "ckpt")  # a new process would see exactly this
    resumed, tail = fit(init_state(_params(), opt), step, _batch_at, 6, manager=manager, progress=False)
    manager.close()
    assert int(resumed.step) == 6 and len(tail) == 3
    assert [h["loss"] for h in tail] == [h["loss"] for h in history[3:]]
    for name, value in _leaves(straight.params).items():
        np.testing.assert_array_equal(_leaves(resumed.params)[name], value, err_msg=name)


def test_router_only_training_leaves_other_parameters_bit_identical():
    params = _params()
    before = _leaves(params)
    opt = masked_optimizer(optax.adam(1e-2), router_only)
    state, _ = fit(init_state(params, opt), make_train_step(MODEL, opt, trainable=router_only), _batch_at, 3,
                   progress=False)
    after = _leaves(state.params)
    routers = [name for name in before if router_only(name)]
    assert routers and len(routers) < len(before)
    for name in before:
        if name in routers:
            assert not np.array_equal(after[name], before[name]), name
        else:
            assert after[name].tobytes() == before[name].tobytes(), name
    assert _leaves(params).keys() == before.keys()  # the caller's arrays survive the donated train step


def _numpy_load_balance(logits: np.ndarray, mask: np.ndarray, k: int) -> float:
    losses = []
    for layer in logits.astype(np.float64):
        tokens = layer[mask.astype(bool)]  # [T, E]
        top = np.argsort(-tokens, axis=-1)[:, :k]
        f = np.bincount(top.ravel(), minlength=tokens.shape[1]) / (k * len(tokens))
        probs = np.exp(tokens - tokens.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        losses.append(tokens.shape[1] * np.sum(f * probs.mean(0)))
    return float(np.mean(losses))


def test_auxiliary_losses_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 4, 7, 6)).astype(np.float32)
    mask = np.ones((4, 7), np.int32)
    mask[0, :3] = mask[2, 5:] = 0
    np.testing.assert_allclose(load_balancing_loss(jnp.asarray(logits), jnp.asarray(mask), 2),
                               _numpy_load_balance(logits, mask, 2), rtol=1e-5)
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(router_z_loss(jnp.asarray(logits), jnp.asarray(mask)),
                               (lse ** 2 * mask[None]).sum() / (3 * mask.sum()), rtol=1e-5)
    balanced = 50 * jnp.eye(6).reshape(1, 1, 6, 6)  # token i goes to expert i: perfect balance gives 1
    assert abs(float(load_balancing_loss(balanced, jnp.ones((1, 6)), 1)) - 1) < 1e-6


def test_cross_entropy_ignores_padding():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(1, 5, 8)), jnp.float32)
    ids = jnp.asarray([[1, 2, 3, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 0, 0]])
    weight = mask * jnp.roll(mask, 1, axis=-1)
    full = cross_entropy(logits[:, :3], ids[:, :3], jnp.ones((1, 3)))
    np.testing.assert_allclose(cross_entropy(logits, ids, weight), full, rtol=1e-6)


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from moe import ModelConfig, MoeTransformer
    from moe.sharding import make_mesh, shard_batch, shard_params
    from moe.train import fit, init_state, make_train_step
    config = ModelConfig(family="olmoe", vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2,
                         head_dim=8, num_experts=4, top_k=2, expert_size=16)
    model = MoeTransformer(config, dispatch="dense")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    ids = np.arange(48, dtype=np.int32).reshape(4, 12) % 31 + 1
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    opt = optax.adam(1e-2)
    step = make_train_step(model, opt)
    plain, ref = fit(init_state(params, opt), step, lambda i: batch, 3, progress=False)
    mesh = make_mesh(data=2, expert=2)
    sharded_batch = {k: shard_batch(v, mesh) for k, v in batch.items()}
    state, got = fit(init_state(shard_params(params, mesh), opt), step, lambda i: sharded_batch, 3, progress=False)
    np.testing.assert_allclose([h["loss"] for h in got], [h["loss"] for h in ref], rtol=1e-5)
    print("sharded ok", len(jax.devices()))
""")


def test_train_step_runs_under_a_mesh():
    pytest.importorskip("moe.sharding")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded ok 4" in done.stdout
