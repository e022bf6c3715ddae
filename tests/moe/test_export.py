"""moe.export: an exported folder loads back bit for bit, and HF transformers computes the same logits."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moe
from moe.convert import abstract_params
from moe.export import check_params, hf_config, olmoe_config, save_hf
from tests.helpers.hf_reference import hf_forward, padded_batch

SIZES = dict(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, num_experts=4, top_k=2, expert_size=12)
VARIANTS = {
    "plain": {},
    "gqa_clip_renormalize": dict(num_kv_heads=1, clip_qkv=1.5, renormalize=True, rope_theta=500.0, norm_eps=1e-6),
    "tied": dict(tie_embeddings=True),
}


def random_params(config: moe.ModelConfig, seed: int = 0) -> dict:
    """Every parameter drawn at random (norm scales around 1), so that no tensor can be mistaken for another."""
    shapes = abstract_params(config)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    flat = {}
    for key, (path, leaf) in zip(keys, shapes.items()):
        noise = 0.2 * jax.random.normal(key, leaf.shape, jnp.float32)
        flat[path] = noise + 1.0 if path.endswith("scale") else noise
    tree: dict = {}
    for path, value in flat.items():
        *parents, name = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = value
    return tree


def _flat(params):
    return {"/".join(k.key for k in path): np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_hf_loads_back_bit_for_bit(variant, tmp_path):
    config = olmoe_config(**SIZES, **VARIANTS[variant])
    params = random_params(config)
    save_hf(tmp_path / "out", config, params, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    folder, read = moe.load_config(tmp_path / "out")
    assert read == config
    model, loaded = moe.from_pretrained(tmp_path / "out")
    assert model.config == config
    ours, back = _flat(params), _flat(loaded)
    assert sorted(ours) == sorted(back)
    for path in ours:
        assert back[path].dtype == np.float32
        np.testing.assert_array_equal(back[path], ours[path], err_msg=path)
    raw = json.loads((folder / "config.json").read_text())
    assert (raw["bos_token_id"], raw["eos_token_id"], raw["pad_token_id"]) == (1, 2, 0)


def test_per_expert_names_as_on_the_hub(tmp_path):
    from safetensors import safe_open
    config = olmoe_config(**SIZES)
    save_hf(tmp_path / "out", config, random_params(config))
    with safe_open(tmp_path / "out" / "model.safetensors", "np") as f:
        names = set(f.keys())
        down = f.get_tensor("model.layers.1.mlp.experts.3.down_proj.weight")
    assert {"model.layers.1.mlp.experts.3.gate_proj.weight", "model.layers.0.mlp.gate.weight",
            "model.layers.0.self_attn.q_norm.weight", "lm_head.weight"} <= names
    assert not any("gate_up" in n for n in names)
    assert len(names) == 3 + 2 * (9 + 3 * 4)  # embed, norm, head; per layer 9 + 3 per expert
    assert down.shape == (16, 12)


def test_bfloat16_export(tmp_path):
    config = olmoe_config(**SIZES)
    params = random_params(config, seed=1)
    save_hf(tmp_path / "out", config, params, dtype="bfloat16")
    _, loaded = moe.from_pretrained(tmp_path / "out")
    for path, value in _flat(params).items():
        expect = value.astype(jnp.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(_flat(loaded)[path], expect, err_msg=path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_transformers_gives_the_same_logits(variant, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    config = olmoe_config(**SIZES, **VARIANTS[variant])
    params = random_params(config, seed=2)
    save_hf(tmp_path / "out", config, params)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    assert next(hf.parameters()).dtype == torch.float32
    ids, mask = padded_batch(config.vocab_size, seq=10, seed=2)  # row 1 left-padded
    hf_logits, hf_router = hf_forward(hf, ids, mask)
    out = moe.MoeTransformer(config).apply({"params": params}, ids, mask)
    real = mask.astype(bool)
    scale = np.abs(hf_logits[real]).max()
    np.testing.assert_allclose(np.asarray(out.logits)[real], hf_logits[real], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(out.router_logits)[:, real], hf_router[:, real], rtol=0,
                               atol=1e-5 * np.abs(hf_router).max())


@pytest.mark.parametrize("change, named", [
    (dict(qk_norm="head"), "qk_norm"),
    (dict(renormalize=True, routing_rule="topk_softmax"), "routing_rule"),
    (dict(qkv_bias=True), "qkv_bias"),
    (dict(moe_layer_flags=(True, False), dense_size=8), "moe_layer_flags"),
    (dict(sliding_windows=(4, None)), "sliding_windows"),
    (dict(rope_kind="linear", rope_params=(("factor", 2.0),)), "rope_kind"),
    (dict(head_dim=4), "head_dim"),
    (dict(norm="layer"), "norm"),
])
def test_configs_olmoe_cannot_express_are_refused(change, named):
    config = dataclasses.replace(olmoe_config(**SIZES), **change)
    with pytest.raises(ValueError, match=f"cannot export as HF OLMoE.*{named}"):
        hf_config(config)


def test_other_families_and_bad_inputs_are_refused(tmp_path):
    config = olmoe_config(**SIZES)
    with pytest.raises(ValueError, match="only olmoe"):
        hf_config(dataclasses.replace(config, family="mixtral"))
    with pytest.raises(ValueError, match="not a multiple of num_heads"):
        olmoe_config(**{**SIZES, "num_heads": 3})
    params = random_params(config)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        save_hf(tmp_path / "a", config, params, dtype="int8")
    with pytest.raises(ValueError, match="extra_files .*config.json"):
        save_hf(tmp_path / "a", config, params, extra_files={"config.json": "{}"})
    with pytest.raises(ValueError, match="extra_files .*'sub/x.txt'"):
        save_hf(tmp_path / "a", config, params, extra_files={"sub/x.txt": ""})
    wrong = random_params(dataclasses.replace(config, expert_size=10))
    with pytest.raises(ValueError, match=r"experts_0/down \[2, 4, 10, 16\] \(wanted \[2, 4, 12, 16\]\)"):
        save_hf(tmp_path / "a", config, wrong)
    with pytest.raises(ValueError, match="missing.*lm_head/kernel"):
        check_params(config, random_params(dataclasses.replace(config, tie_embeddings=True)))
    assert not (tmp_path / "a").exists()
    (tmp_path / "a").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        save_hf(tmp_path / "a", config, params)


def test_overwrite_replaces_folder_and_writes_extra_files(tmp_path):
    config = olmoe_config(**SIZES)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    save_hf(tmp_path / "out", config, random_params(config), extra_files={"notes.json": '{"a": 1}'},
            overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors",
                                                                   "notes.json"]
    assert json.loads((tmp_path / "out" / "notes.json").read_text()) == {"a": 1}
