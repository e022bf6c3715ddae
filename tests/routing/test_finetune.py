"""Routing-aware finetuning: the alignment loss's gradient flows only through the language side, it vanishes
when both sides are the same text, and router-only finetuning changes nothing but routers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe import ModelConfig, MoeTransformer
from moe.train import param_path, router_only
from routing.finetune import FinetuneSettings, finetune, routing_alignment_loss

CONFIG = ModelConfig(family="olmoe", vocab_size=40, hidden_size=16, num_layers=3, num_heads=2, num_kv_heads=2,
                     head_dim=8, num_experts=4, top_k=2, expert_size=16)
MODEL = MoeTransformer(CONFIG, dispatch="dense")
PARAMS = MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
# Reference rows use tokens 10..19, language rows tokens 20..29 (disjoint vocabularies); left padding on one row.
REF = np.array([[10, 11, 12, 13, 14, 15], [0, 0, 16, 17, 18, 19]], np.int32)
IDS = jnp.asarray(np.concatenate([REF, np.where(REF > 0, REF + 10, 0)]))
MASK = (IDS > 0).astype(jnp.int32)


def _leaves(tree) -> dict[str, np.ndarray]:
    return {param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _alignment(params, ids, layers=(1,), divergence="jsd"):
    out = MODEL.apply({"params": params}, ids, (ids > 0).astype(jnp.int32))
    return routing_alignment_loss(out.router_logits, (ids > 0).astype(jnp.int32), layers, divergence)


@pytest.mark.parametrize("divergence", ["jsd", "kl", "normalized_jsd"])
def test_gradient_flows_only_through_the_language_side(divergence):
    logits = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 6, 4))
    grad = np.asarray(jax.grad(routing_alignment_loss)(logits, MASK, (1,), divergence))
    assert np.all(grad[:, :2] == 0)  # reference half: held fixed
    assert np.all(grad[[0, 2]] == 0)  # layers outside the chosen ones
    assert np.abs(grad[1, 2:]).sum() > 0
    embed = jax.grad(lambda p: _alignment(p, IDS, divergence=divergence))(PARAMS)["embed"]
    assert np.all(embed[10:20] == 0)  # reference tokens get nothing ...
    assert np.abs(embed[20:30]).sum() > 0  # ... language tokens do


def test_gradient_reaches_routers_of_the_language_side():
    grads = _leaves(jax.grad(_alignment)(PARAMS, IDS))
    assert any(np.abs(g).sum() > 0 for name, g in grads.items() if router_only(name))
    assert all(np.all(g == 0) for name, g in grads.items() if "lm_head" in name)


@pytest.mark.parametrize("divergence", ["jsd", "kl", "normalized_jsd"])
def test_loss_is_zero_when_both_sides_are_the_same_text(divergence):
    same = jnp.concatenate([IDS[:2], IDS[:2]])
    assert float(_alignment(PARAMS, same, (0, 1, 2), divergence)) == pytest.approx(0.0, abs=1e-7)
    assert float(_alignment(PARAMS, IDS, (0, 1, 2), divergence)) > 0


def test_router_only_finetuning_changes_only_routers():
    def batch_at(step):
        return {"input_ids": IDS, "attention_mask": MASK, "alignment_weight": jnp.float32(1.0)}

    settings = FinetuneSettings(layers=(1,), steps=2, learning_rate=1e-2)
    params, history = finetune(MODEL, PARAMS, batch_at, settings, progress=False)
    before, after = _leaves(PARAMS), _leaves(params)
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        assert changed == router_only(name), name
    assert len(history) == 2 and history[0]["extra"] > 0


def _np64_losses(ref_logits: np.ndarray, lang_logits: np.ndarray) -> dict[str, float]:
    """The three alignment losses in float64 (every token real): mean over layers and pairs."""
    def q(z):
        probs = np.exp(z - z.max(-1, keepdims=True))
        return (probs / probs.sum(-1, keepdims=True)).mean(2)

    p, r = q(ref_logits.astype(np.float64)), q(lang_logits.astype(np.float64))
    m = np.maximum((p + r) / 2, 1e-10)
    jsd = 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (r * np.log(r / m)).sum(-1)
    gap = np.log(p.shape[-1]) + 0.5 * ((p * np.log(p + 1e-10)).sum(-1) + (r * np.log(r + 1e-10)).sum(-1))
    kl = (p * np.log(p / r)).sum(-1)
    return {"jsd": jsd.mean(), "normalized_jsd": (jsd / np.maximum(gap, 1e-6)).mean(), "kl": kl.mean()}


@pytest.mark.parametrize("divergence", ["jsd", "kl", "normalized_jsd"])
def test_losses_match_float64_when_the_language_side_suppresses_an_expert(divergence):
    """Expert 1 pushed to -20 (layer 0) and -60 (layer 1) on the language side: the loss matches float64 and its
    gradient pushes that expert's logits up (the old float32 formulas gave 0, or clamped q at 1e-12)."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (2, 2, 6, 4)).astype(np.float32)
    lang = ref + rng.normal(0, 0.5, ref.shape).astype(np.float32)
    lang[0, :, :, 1], lang[1, :, :, 1] = -20.0, -60.0
    logits = jnp.asarray(np.concatenate([ref, lang], axis=1))
    mask = jnp.ones((4, 6), jnp.int32)
    want = _np64_losses(ref, lang)[divergence]
    assert float(routing_alignment_loss(logits, mask, (0, 1), divergence)) == pytest.approx(want, rel=1e-4)
    grad = np.asarray(jax.grad(routing_alignment_loss)(logits, mask, (0, 1), divergence))
    assert np.isfinite(grad).all() and np.all(grad[:, 2:, :, 1] < 0)
