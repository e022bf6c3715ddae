"""Phi-3.5-MoE and GPT-OSS against HF transformers (float32, eager attention): parity, LongRoPE, YaRN, MXFP4."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import GptOssConfig, GptOssForCausalLM, Mxfp4Config, PhimoeConfig, PhimoeForCausalLM
from transformers.integrations.mxfp4 import convert_moe_packed_tensors
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.phimoe.modeling_phimoe import sparsemixer

import moe
from moe.checkpoint_files import CheckpointError
from moe.convert import convert_tensors
from moe.families import UnsupportedConfigError, config_from_hf
from moe.generate import generate
from moe.layers import rope_tables
from moe.mxfp4 import dequantize, dequantize_pairs
from moe.routing_rules import route, sparsemixer_top2
from tests.helpers.hf_reference import hf_forward

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, num_local_experts=8)
SEQ = 12
ORIGINAL = 8  # LongRoPE's original_max_position_embeddings in the tiny Phi: SEQ tokens go past it
LONGROPE = dict(rope_type="longrope", rope_theta=10000.0, short_factor=np.linspace(1.0, 1.5, 8).tolist(),
                long_factor=np.linspace(1.0, 6.0, 8).tolist(), short_mscale=1.1, long_mscale=1.3,
                original_max_position_embeddings=ORIGINAL)
TOL = 1e-4


def _tiny_hf(config_cls, model_cls, seed: int, **overrides):
    """A seeded tiny HF model with weights large enough (std 0.1, sinks std 1) that routing is not trivial."""
    torch.manual_seed(seed)
    config = config_cls(**TINY, **overrides)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 1.0 if name.endswith("sinks") else 0.1)
    return model


def _batch(pads: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.RandomState(0).randint(0, TINY["vocab_size"], (2, SEQ))
    mask = np.ones((2, SEQ), np.int32)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return ids, mask


def _hf_choices(hf, router_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HF's own routing (weights, experts) on its router logits."""
    logits = torch.tensor(router_logits)
    if hf.config.model_type == "phimoe":
        weights, experts = sparsemixer(logits, jitter_eps=hf.config.router_jitter_noise, training=False)
        return weights.numpy(), experts.numpy()
    values, experts = torch.topk(logits, hf.config.num_experts_per_tok, dim=-1)
    return torch.softmax(values, dim=-1).numpy(), experts.numpy()


def _assert_parity(hf, model, forward, params, ids, mask) -> None:
    """Logits and every MoE layer's router logits <= TOL at real positions; identical top-k and close weights."""
    hf_logits, hf_router = hf_forward(hf, ids, mask)
    out = forward(params, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[real], hf_logits[real], atol=TOL, rtol=0)
    ours_router = np.asarray(out.router_logits)
    assert ours_router.shape == hf_router.shape
    np.testing.assert_allclose(ours_router[:, real], hf_router[:, real], atol=TOL, rtol=0)
    weights, experts = route(model.config, jnp.asarray(ours_router))
    hf_weights, hf_experts = _hf_choices(hf, hf_router)
    np.testing.assert_array_equal(np.asarray(experts)[:, real], hf_experts[:, real])
    np.testing.assert_allclose(np.asarray(weights)[:, real], hf_weights[:, real], atol=TOL, rtol=0)


def _jitted(model):
    """jit of model.apply that records each trace, so tests can check that nothing recompiles."""
    traces = []

    def forward(params, ids, mask):
        traces.append(ids.shape)
        return model.apply({"params": params}, ids, mask)

    return jax.jit(forward), traces


@pytest.fixture(scope="module")
def phimoe(tmp_path_factory):
    hf = _tiny_hf(PhimoeConfig, PhimoeForCausalLM, seed=0, attention_bias=True, lm_head_bias=True,
                  sliding_window=10, max_position_embeddings=64, rope_parameters=LONGROPE)
    folder = tmp_path_factory.mktemp("phimoe")
    hf.save_pretrained(folder)
    model, params = moe.from_pretrained(folder)
    forward, traces = _jitted(model)
    return hf, model, forward, traces, params


class _HfLongropeFactors:
    """HF 5.x phimoe recomputes its frequencies with the short factors on every call and switches only the mscale
    (4.x and Microsoft's code also switch the factors). Inside this context its rotary embedding uses the
    frequencies that HF's own `dynamic_rope_update` selected by `max(position_ids) + 1`, as before."""

    def __init__(self, hf):
        self.rotary = hf.model.rotary_emb

    def __enter__(self):
        self.original = self.rotary.rope_init_fn
        self.rotary.rope_init_fn = lambda config, *args, **kwargs: (self.rotary.inv_freq, None)

    def __exit__(self, *exc):
        self.rotary.rope_init_fn = self.original


def test_phimoe_parity_longrope_past_original_length(phimoe):
    hf, model, forward, _, params = phimoe
    assert model.config.norm == "layer" and model.config.lm_head_bias and model.config.qkv_bias
    ids, mask = _batch((0, 3))  # 12 real tokens in row 0: past ORIGINAL, long factors and long_mscale
    with _HfLongropeFactors(hf):
        _assert_parity(hf, model, forward, params, ids, mask)
    # Canary: unpatched HF 5.x keeps the short factors here. If this fails, HF switches them itself again.
    hf_logits, _ = hf_forward(hf, ids, mask)
    assert np.abs(np.asarray(forward(params, ids, mask).logits) - hf_logits)[mask.astype(bool)].max() > 1e-2


def test_phimoe_longrope_switch_follows_real_tokens_under_jit(phimoe):
    """Padded to SEQ > ORIGINAL but with <= ORIGINAL real tokens per row: short factors, as HF (max position)."""
    hf, model, forward, traces, params = phimoe
    ids, mask = _batch((SEQ - ORIGINAL, SEQ - ORIGINAL + 2))
    _assert_parity(hf, model, forward, params, ids, mask)
    forward(params, *_batch((0, 3)))
    assert len(traces) == 1, "the short/long switch must not recompile"


@pytest.mark.parametrize("side", ["left", "right"])
def test_phimoe_longrope_per_row_padded_batch_equals_each_row_alone_in_hf(phimoe, side):
    """Rows longer and shorter than ORIGINAL in one padded batch: each gets its own factors, as when run alone
    (HF alone, with the long factors patched in; HF itself would give every row of the batch the long ones)."""
    hf, model, _, _, params = phimoe
    lengths = [SEQ, 5, ORIGINAL + 2, ORIGINAL]  # long, short, long, short (exactly ORIGINAL)
    ids = np.random.RandomState(1).randint(0, TINY["vocab_size"], (len(lengths), SEQ))
    mask = np.zeros_like(ids, dtype=np.int32)
    for row, n in enumerate(lengths):
        mask[row, slice(SEQ - n, None) if side == "left" else slice(0, n)] = 1
    out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(params, ids, mask)
    for row, n in enumerate(lengths):
        real = mask[row].astype(bool)
        alone = ids[row, real][None]
        with _HfLongropeFactors(hf):
            hf_logits, hf_router = hf_forward(hf, alone, np.ones_like(alone))
        np.testing.assert_allclose(np.asarray(out.logits)[row, real], hf_logits[0], atol=TOL, rtol=0)
        np.testing.assert_allclose(np.asarray(out.router_logits)[:, row, real], hf_router[:, 0], atol=TOL, rtol=0)


def test_phimoe_generation_of_a_batch_equals_each_row_alone(phimoe):
    """A short prompt batched with one past ORIGINAL keeps the short factors while it generates."""
    _, model, _, _, params = phimoe
    prompts = np.random.RandomState(2).randint(1, TINY["vocab_size"], (2, SEQ))
    mask = np.ones_like(prompts, dtype=np.int32)
    mask[1, :SEQ - 3] = 0  # row 1: 3 real tokens, 3 + 4 new tokens stay <= ORIGINAL
    batch = generate(model, params, prompts, mask, max_new_tokens=4, eos_id=None)
    for row in range(2):
        real = mask[row].astype(bool)
        alone = generate(model, params, prompts[row, real][None], max_new_tokens=4, eos_id=None)
        np.testing.assert_array_equal(np.asarray(batch.tokens)[row], np.asarray(alone.tokens)[0])


def test_phimoe_fused_layout_converts_like_per_expert_layout(phimoe):
    """transformers v5 in memory: `mlp.router` and fused `mlp.experts.gate_up_proj`; saved: Mixtral's names."""
    hf, model, _, _, params = phimoe
    fused = convert_tensors(model.config, ((k, v.numpy()) for k, v in hf.state_dict().items()))
    assert any(k.endswith("mlp.router.weight") for k in hf.state_dict())
    jax.tree.map(np.testing.assert_array_equal, fused, params)


def test_gpt_oss_parity_sinks_sliding_window_yarn_biases(tmp_path):
    # Released gpt-oss YaRN (factor 32, original 4096, beta 32/1, truncate False); window 4 < SEQ; clamp active.
    hf = _tiny_hf(GptOssConfig, GptOssForCausalLM, seed=1, head_dim=16, sliding_window=4, num_experts_per_tok=4,
                  swiglu_limit=0.5)
    hf.save_pretrained(tmp_path)
    model, params = moe.from_pretrained(tmp_path)
    c = model.config
    assert c.sliding_windows == (4, None, 4) and c.attention_sinks and c.router_bias and c.expert_bias
    assert c.rope_kind == "yarn" and c.routing_rule == "topk_softmax" and c.expert_activation == "clamped_swiglu"
    forward, _ = _jitted(model)
    _assert_parity(hf, model, forward, params, *_batch((0, 3)))


def _write_mxfp4_checkpoint(hf, folder: Path) -> None:
    """The released layout: experts as `*_blocks` [E, R, G, 16] + `*_scales` [E, R, G] uint8 (random codes, scales
    2 ** -8 .. 2 ** -4), the rest as is, in two shards with an index; layer 0's gate_up blocks and scales sit in
    different shards, so the converter must hold one half until the other comes."""
    hf.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    rng = np.random.default_rng(0)
    e, d, f = TINY["num_local_experts"], TINY["hidden_size"], TINY["intermediate_size"]
    fused = ("experts.gate_up_proj", "experts.down_proj")
    tensors = {k: v.numpy() for k, v in hf.state_dict().items() if not k.endswith(fused)}
    quantised = {}
    for i in range(TINY["num_hidden_layers"]):
        for proj, (rows, cols) in {"gate_up_proj": (2 * f, d), "down_proj": (d, f)}.items():
            name = f"model.layers.{i}.mlp.experts.{proj}"
            quantised[name + "_blocks"] = rng.integers(0, 256, (e, rows, cols // 32, 16), dtype=np.uint8)
            quantised[name + "_scales"] = rng.integers(119, 124, (e, rows, cols // 32), dtype=np.uint8)
    first = "model.layers.0.mlp.experts.gate_up_proj_blocks"
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in {**tensors, **quantised}.items() if k != first},
              "model-00002-of-00002.safetensors": {first: quantised[first]}}
    for file, content in shards.items():
        save_file(content, str(folder / file), metadata={"format": "pt"})
    weight_map = {name: file for file, content in shards.items() for name in content}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(config))


def test_gpt_oss_mxfp4_checkpoint_matches_hf_dequantised_model(tmp_path):
    hf = _tiny_hf(GptOssConfig, GptOssForCausalLM, seed=2, head_dim=16, sliding_window=4, num_experts_per_tok=4)
    _write_mxfp4_checkpoint(hf, tmp_path)
    hf = GptOssForCausalLM.from_pretrained(tmp_path, quantization_config=Mxfp4Config(dequantize=True),
                                           dtype=torch.float32).eval()
    hf.config._attn_implementation = "eager"
    model, params = moe.from_pretrained(tmp_path)
    expected = hf.model.layers[0].mlp.experts.gate_up_proj.detach().numpy()
    np.testing.assert_array_equal(np.asarray(params["experts_0"]["gate_up"][0, :, :, 0]), expected[..., 0::2])
    np.testing.assert_array_equal(np.asarray(params["experts_0"]["gate_up"][0, :, :, 1]), expected[..., 1::2])
    forward, _ = _jitted(model)
    _assert_parity(hf, model, forward, params, *_batch((0, 3)))


@pytest.mark.parametrize("dtype,torch_dtype,bits,torch_bits", [
    (np.float32, torch.float32, np.int32, torch.int32), (ml_dtypes.bfloat16, torch.bfloat16, np.int16, torch.int16)])
def test_mxfp4_dequantize_is_bit_exact_with_transformers(dtype, torch_dtype, bits, torch_bits):
    blocks = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 16), dtype=np.uint8)
    scales = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)  # every exponent: subnormals, overflow, 2 ** 128
    ours = dequantize(blocks, scales, dtype)
    theirs = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch_dtype)
    assert ours.shape == tuple(theirs.shape) == (4, 8 * 32, 8)
    np.testing.assert_array_equal(ours.view(bits), theirs.view(torch_bits).numpy())


def test_mxfp4_errors_inconsistent_shapes_and_unpaired_tensors():
    blocks = np.zeros((2, 4, 2, 16), np.uint8)
    inconsistent = r"x\.w: inconsistent MXFP4 shapes: blocks \(2, 4, 2, 16\) and scales \(2, 4, 3\)"
    with pytest.raises(CheckpointError, match=inconsistent):
        list(dequantize_pairs([("x.w_blocks", blocks), ("x.w_scales", np.zeros((2, 4, 3), np.uint8))]))
    with pytest.raises(CheckpointError, match=r"without their partner: x\.w_blocks \(no x\.w_scales\)"):
        list(dequantize_pairs([("x.w_blocks", blocks), ("y", np.zeros(3))]))
    with pytest.raises(CheckpointError, match="must be uint8"):
        dequantize(blocks.astype(np.float32), np.zeros((2, 4, 2), np.uint8))


def _hf_cos(inv_freq: torch.Tensor, scale: float, positions: np.ndarray) -> np.ndarray:
    return (np.cos(positions[:, None] * inv_freq.numpy()[None]) * scale).astype(np.float32)


@pytest.mark.parametrize("extra", [{}, {"truncate": True}, {"beta_fast": 16.0, "beta_slow": 2.0},
                                   {"mscale": 1.0, "mscale_all_dim": 0.5}, {"attention_factor": 1.25}])
def test_yarn_tables_match_hf(extra):
    rope = dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                original_max_position_embeddings=64) | extra
    hf_config = GptOssConfig(**TINY, head_dim=16, max_position_embeddings=2048, rope_parameters=rope)
    inv_freq, scale = ROPE_INIT_FUNCTIONS["yarn"](hf_config)
    positions = np.arange(200)
    cos, _ = rope_tables(config_from_hf(hf_config.to_diff_dict()), jnp.asarray(positions)[None])
    np.testing.assert_allclose(np.asarray(cos)[0, :, :8], _hf_cos(inv_freq, scale, positions), atol=1e-5, rtol=0)


@pytest.mark.parametrize("length", [ORIGINAL, ORIGINAL + 1])
def test_longrope_switches_factors_and_mscale_after_original_length(length):
    hf_config = PhimoeConfig(**TINY, max_position_embeddings=64, rope_parameters=LONGROPE)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](hf_config, seq_len=length)
    mscale = LONGROPE["long_mscale" if length > ORIGINAL else "short_mscale"]
    positions = np.arange(length)
    cos, _ = rope_tables(config_from_hf(hf_config.to_diff_dict()), jnp.asarray(positions)[None])
    np.testing.assert_allclose(np.asarray(cos)[0, :, :8], _hf_cos(inv_freq, mscale, positions), atol=1e-6, rtol=0)


def test_sparsemixer_matches_hf_inference_path():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (256, 8)).astype(np.float32)
    logits[:64] *= 0.01  # most experts survive the jitter threshold
    logits[64:128] -= 5.0  # all-negative rows: the |score| clamp
    logits[128:132, :2] = logits[128:132, 2:4] = 0.0  # zeros and ties
    for jitter in (0.01, 0.5):
        weights, experts = sparsemixer_top2(jnp.asarray(logits), jitter)
        hf_weights, hf_experts = sparsemixer(torch.tensor(logits), jitter_eps=jitter, training=False)
        np.testing.assert_array_equal(np.asarray(experts), hf_experts.numpy())
        np.testing.assert_allclose(np.asarray(weights), hf_weights.numpy(), atol=1e-7, rtol=0)


def test_phimoe_rejects_top_k_other_than_2():
    raw = PhimoeConfig(**TINY, num_experts_per_tok=3).to_diff_dict()
    with pytest.raises(UnsupportedConfigError, match="sparsemixer, which is top-2 only; num_experts_per_tok=3"):
        config_from_hf(raw)


def test_released_configs_are_read():
    """config.json as Phi-3.5-MoE-instruct and gpt-oss-20b ship them (legacy rope_scaling, OpenAI's extra fields)."""
    phi = dict(model_type="phimoe", vocab_size=32064, hidden_size=4096, intermediate_size=6400, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, num_local_experts=16, num_experts_per_tok=2,
               hidden_act="silu", attention_bias=True, lm_head_bias=True, rms_norm_eps=1e-5, rope_theta=10000.0,
               max_position_embeddings=131072, original_max_position_embeddings=4096, sliding_window=131072,
               router_jitter_noise=0.01, input_jitter_noise=0.01, tie_word_embeddings=False, hidden_dropout=0.0,
               rope_scaling=dict(type="longrope", short_factor=[1.0] * 64, long_factor=[2.0] * 64,
                                 short_mscale=1.243163121016122, long_mscale=1.243163121016122,
                                 original_max_position_embeddings=4096))
    c = config_from_hf(phi)
    assert (c.rope_kind, c.routing_rule, c.top_k, c.router_jitter) == ("longrope", "sparsemixer", 2, 0.01)
    assert c.norm == "layer" and c.qkv_bias and c.lm_head_bias and c.sliding_windows == (131072,) * 32
    gpt = dict(model_type="gpt_oss", vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64,
               num_hidden_layers=24, num_attention_heads=64, num_key_value_heads=8, num_local_experts=32,
               num_experts_per_tok=4, experts_per_token=4, initial_context_length=4096, hidden_act="silu",
               attention_bias=True, rms_norm_eps=1e-5, rope_theta=150000, sliding_window=128, swiglu_limit=7.0,
               max_position_embeddings=131072, tie_word_embeddings=False,
               layer_types=["sliding_attention", "full_attention"] * 12,
               quantization_config={"quant_method": "mxfp4"},
               rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                                 original_max_position_embeddings=4096))
    c = config_from_hf(gpt)
    assert c.sliding_windows[:2] == (128, None) and c.rope_param("factor") == 32.0 and c.top_k == 4
    with pytest.raises(UnsupportedConfigError, match=r"rope field\(s\) \['factor'\] are not supported"):
        config_from_hf(phi | {"rope_scaling": phi["rope_scaling"] | {"factor": 32.0}})
    with pytest.raises(UnsupportedConfigError, match="needs field"):
        config_from_hf(gpt | {"rope_scaling": {"rope_type": "yarn", "factor": 32.0}})
