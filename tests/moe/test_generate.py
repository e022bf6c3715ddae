"""Cached greedy decoding: parity with HF `generate`, cache vs full forward, routing edits at every step."""
import jax
import numpy as np
import pytest
import torch

import moe
from moe.generate import generate
from moe.kv_cache import KVCache
from routing import steering
from tests.helpers.hf_reference import FAMILIES, padded_batch, tiny_model

SEEDS = {"qwen2_moe": 2}  # seed 0 of qwen2_moe repeats one token from the first step
NEW_TOKENS = 10  # prompts of 8 (row 1 left-padded by 4) + 10 new tokens cross every sliding window (5)


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    loaded = {}

    def get(family):
        if family not in loaded:
            hf = tiny_model(family, seed=SEEDS.get(family, 0))
            folder = tmp_path_factory.mktemp(family)
            hf.save_pretrained(folder)
            loaded[family] = (hf, *moe.from_pretrained(folder))
        return loaded[family]

    return get


def hf_generate(hf, ids, mask, eos):
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=eos)
    out = out[:, ids.shape[1]:].numpy()  # HF stops early once every row is done
    return np.pad(out, ((0, 0), (0, NEW_TOKENS - out.shape[1])))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_tokens_match_hf_generate(family, load):
    hf, model, params = load(family)
    ids, mask = padded_batch(hf.config.vocab_size, seq=8, seed=SEEDS.get(family, 0))
    free = hf_generate(hf, ids, mask, eos=None)
    eos = int(free[0, 3])  # row 0 stops at step 3 at the latest
    unused = int(np.setdiff1d(np.arange(hf.config.vocab_size), free)[-1])  # shows that a set of ids works
    expected = hf_generate(hf, ids, mask, eos=[eos, unused])
    out = generate(model, params, ids, mask, max_new_tokens=NEW_TOKENS, eos_id={eos, unused})
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    lengths = np.asarray(out.lengths)
    assert lengths[0] <= 4 and (expected[0, lengths[0]:] == 0).all()
    for row, n in enumerate(lengths):
        assert n == NEW_TOKENS or expected[row, n - 1] == eos


def test_cached_logits_equal_full_forward(load):
    """Prefill 6 slots (row 1: 4 pads + 2 tokens), then one token at a time, past the sliding window."""
    _, model, params = load("qwen3_moe")  # GQA, a dense layer, q/k norm, every layer windowed
    ids, mask = padded_batch(model.config.vocab_size, seq=12)
    full = jax.jit(model.apply)({"params": params}, ids, mask).logits
    step = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, m, cache=c))
    out = step(params, ids[:, :6], mask[:, :6], KVCache.create(model.config, 2, 12))
    np.testing.assert_allclose(out.logits[1, 4:], full[1, 4:6], atol=1e-4)
    for t in range(6, 12):
        out = step(params, ids[:, t:t + 1], mask[:, t:t + 1], out.cache)
        np.testing.assert_allclose(out.logits[:, 0], full[:, t], atol=1e-4)
    assert int(out.cache.index) == 12


def test_last_only_gives_the_last_positions_logits(load):
    _, model, params = load("qwen3_moe")
    ids, mask = padded_batch(model.config.vocab_size, seq=12)
    full = model.apply({"params": params}, ids, mask).logits
    last = model.apply({"params": params}, ids, mask, last_only=True).logits
    assert last.shape == (2, 1, model.config.vocab_size)
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-6)
    cached = model.apply({"params": params}, ids, mask, cache=KVCache.create(model.config, 2, 12), last_only=True)
    np.testing.assert_allclose(cached.logits[:, 0], full[:, -1], atol=1e-4)


def test_routing_edit_applies_at_every_step_without_recompiling(load):
    _, model, params = load("qwen3_moe")
    c = model.config
    ids, mask = padded_batch(c.vocab_size, seq=8)
    traces = []

    def count_traces(logits, moe_layer):  # a static function: runs only while tracing
        traces.append(moe_layer)
        return logits

    def run(edit):
        edit = None if edit is None else steering.chain(edit, count_traces)
        return np.asarray(generate(model, params, ids, mask, max_new_tokens=NEW_TOKENS, edit=edit).tokens)

    plain = run(None)
    np.testing.assert_array_equal(run(steering.empty(c.num_moe_layers, c.num_experts)), plain)
    compiled = len(traces)
    moe_stacks = sum(c.moe_layer_flags[s[0]] for s in c.layer_stacks)
    assert compiled == 2 * moe_stacks  # each scanned MoE stack traced once for the prefill, once for the loop
    forced = [run(steering.force_on(c.num_moe_layers, c.num_experts, {0: [e], 1: [e]})) for e in range(3)]
    assert len(traces) == compiled
    assert all((f != plain).any() for f in forced)
