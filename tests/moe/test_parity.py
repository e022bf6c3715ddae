"""Exact parity of the JAX decoder with HF transformers (PyTorch, float32) for each family."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moe
from tests.helpers.hf_reference import FAMILIES, hf_forward, padded_batch, tiny_model

TOL = 1e-4


def _compare(out, hf_logits, hf_router, mask, top_k):
    real = mask.astype(bool)
    logits, router = np.asarray(out.logits), np.asarray(out.router_logits)
    assert router.shape == hf_router.shape
    np.testing.assert_array_less(np.abs(logits - hf_logits)[real].max(), TOL)
    np.testing.assert_array_less(np.abs(router - hf_router)[:, real].max(), TOL)
    ours = np.sort(np.asarray(jax.lax.top_k(out.router_logits, top_k)[1]), -1)[:, real]
    theirs = np.sort(np.argsort(-hf_router, -1)[..., :top_k], -1)[:, real]
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_and_router_logits_match_hf(family, tmp_path):
    hf = tiny_model(family)
    hf.save_pretrained(tmp_path)
    model, params = moe.from_pretrained(tmp_path)
    ids, mask = padded_batch(hf.config.vocab_size)
    out = jax.jit(model.apply)({"params": params}, ids, mask)
    _compare(out, *hf_forward(hf, ids, mask), mask, model.config.top_k)


def test_config_data_per_family(tmp_path):
    """The family features the parity test relies on are really switched on."""
    expect = {
        "olmoe": lambda c: c.qk_norm == "projection" and c.clip_qkv == 2.0 and not c.renormalize,
        "qwen3_moe": lambda c: c.qk_norm == "head" and c.moe_layers == (0, 2) and c.renormalize
        and c.sliding_windows == (5, 5, 5),
        "qwen2_moe": lambda c: c.shared_expert_size == 40 and c.qkv_bias and c.sliding_windows == (5, None, None),
        "mixtral": lambda c: c.renormalize and c.sliding_windows == (5, 5, 5),
    }
    for family, check in expect.items():
        tiny_model(family).save_pretrained(tmp_path / family)
        model, _ = moe.from_pretrained(tmp_path / family)
        assert check(model.config), (family, model.config)


def test_sharded_checkpoint(tmp_path):
    hf = tiny_model("qwen2_moe", seed=1)
    hf.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 3
    model, params = moe.from_pretrained(tmp_path)
    ids, mask = padded_batch(hf.config.vocab_size, seed=1)
    _compare(model.apply({"params": params}, ids, mask), *hf_forward(hf, ids, mask), mask, model.config.top_k)


def test_fused_expert_layout(tmp_path):
    """Fused 3-D experts (gate_up_proj [E, 2F, D], down_proj [E, D, F]: HF's in-memory layout) load the same."""
    from safetensors.numpy import save_file
    hf = tiny_model("olmoe", seed=2)
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    hf.config.save_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"))
    model, params = moe.from_pretrained(tmp_path)
    ids, mask = padded_batch(hf.config.vocab_size, seed=2)
    _compare(model.apply({"params": params}, ids, mask), *hf_forward(hf, ids, mask), mask, model.config.top_k)


def test_pytorch_bin_checkpoint(tmp_path):
    import torch
    hf = tiny_model("mixtral", seed=3)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model, params = moe.from_pretrained(tmp_path)
    ids, mask = padded_batch(hf.config.vocab_size, seed=3)
    _compare(model.apply({"params": params}, ids, mask), *hf_forward(hf, ids, mask), mask, model.config.top_k)


def test_right_padding_matches_unpadded(tmp_path):
    hf = tiny_model("olmoe", seed=4)
    hf.save_pretrained(tmp_path)
    model, params = moe.from_pretrained(tmp_path)
    ids, _ = padded_batch(hf.config.vocab_size, seed=4)
    right = np.concatenate([ids[:1, :8], np.zeros((1, 4), np.int32)], axis=1)
    mask = np.array([[1] * 8 + [0] * 4], np.int32)
    alone = model.apply({"params": params}, ids[:1, :8])
    padded = model.apply({"params": params}, right, mask)
    np.testing.assert_allclose(padded.logits[:, :8], alone.logits, atol=1e-5)
    np.testing.assert_allclose(padded.router_logits[:, :, :8], alone.router_logits, atol=1e-5)


KL_BOUND = 0.02  # mean per-token KL(float32 HF || bfloat16 ours) of next-token distributions, in nats


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe"])
def test_bfloat16_stays_close(family, tmp_path):
    hf = tiny_model(family, seed=5)
    hf.save_pretrained(tmp_path)
    model, params = moe.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.bfloat16
    ids, mask = padded_batch(hf.config.vocab_size, seed=5)
    out = model.apply({"params": params}, ids, mask)
    ref, _ = hf_forward(hf, ids, mask)
    p = jax.nn.log_softmax(ref, -1)
    q = jax.nn.log_softmax(np.asarray(out.logits, np.float32), -1)
    kl = np.asarray(jnp.sum(jnp.exp(p) * (p - q), -1))[mask.astype(bool)]
    assert np.isfinite(kl).all() and kl.mean() < KL_BOUND, kl.mean()
