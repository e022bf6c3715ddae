"""Multiple choice by log-likelihood: prompts, parity with HF PyTorch and with a slow per-option loop
(padding, options of different lengths and counts, one-token options, edits), progress, accuracy."""
import jax
import numpy as np
import pytest
import torch

import moe
from routing import steering
from routing.data import Belebele, MedicalMcq, load_tokenizer, read_records
from routing.eval.results import accuracy_table
from routing.eval.multiple_choice import (EncodedItem, McFormat, encode_items, evaluate_multiple_choice, mc_prompt,
                                          score_options)
from tests.helpers.hf_reference import tiny_model
from tests.helpers.tiny_olmoe import tfds_dir, write_tiny_olmoe

BUCKETS = (256,)
RECORD = {"id": 7, "language": "eng_Latn", "question": " Why? ", "choices": ["a", " b ", "c", "d"], "label": 1}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """PyTorch's thread pool and XLA's contend on a small CPU (several times slower); keep PyTorch to one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_mc")
    hf = write_tiny_olmoe(folder, shared_data)
    model, params = moe.from_pretrained(folder)
    data, tokenizer = tfds_dir(tmp_path_factory), load_tokenizer(folder)
    records = []
    for builder, languages in ((Belebele, ("eng_Latn", "ind_Latn")), (MedicalMcq, ("eng_Latn", "arb_Arab"))):
        b = builder(source_dir=shared_data, data_dir=data)
        b.download_and_prepare()
        rows = read_records(b, "test")
        for lang in languages:  # the first two items whose prompt fits the 256 bucket with any option
            fits = [r for r in rows[:2000] if r["language"] == lang
                    and len(encode_items(tokenizer, [r], McFormat(options="text"))[0].prompt) < 200]
            records += fits[:2]
    return hf, model, params, tokenizer, records


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny HF OLMoE (vocabulary 128) and items of every awkward shape: prompts of 3 to 30 tokens (left
    padding, three buckets, a bucket holding one item), 1 to 6 option tokens, 2 to 4 options, a repeated option."""
    hf = tiny_model("olmoe")
    folder = tmp_path_factory.mktemp("tiny_olmoe_128")
    hf.save_pretrained(folder)
    rng = np.random.RandomState(0)

    def tokens(n):
        return rng.randint(1, 128, n).tolist()

    items = [EncodedItem(tokens(5), [[3], [7, 8, 9], [4, 4], [100]]),
             EncodedItem(tokens(17), [[5], [6]]),
             EncodedItem(tokens(9), [tokens(6), [9], tokens(5), [2]]),
             EncodedItem(tokens(30), [[12], [13], [14]]),
             EncodedItem(tokens(3), [[50, 51], [50, 51], [52]]),  # a tie between options 0 and 1
             EncodedItem(tokens(12), [tokens(2), tokens(3)])]
    return hf, *moe.from_pretrained(folder), items


_FORWARDS = {}


def slow_option_logprobs(model, params, prompt, option, edit=None):
    """One forward of prompt + option alone (right-padded to a power of two >= 64, which changes nothing at the
    real positions; jitted, so the reference compiles once per width and edit kind), log-softmax over the whole
    vocabulary in float64."""
    ids = prompt + option
    width = max(64, 1 << (len(ids) - 1).bit_length())
    padded, mask = np.zeros((1, width), np.int32), np.zeros((1, width), np.int32)
    padded[0, :len(ids)], mask[0, :len(ids)] = ids, 1
    if id(model) not in _FORWARDS:
        _FORWARDS[id(model)] = jax.jit(lambda p, i, m, e: model.apply({"params": p}, i, m, edit=e).logits)
    logits = np.asarray(_FORWARDS[id(model)](params, padded, mask, edit), np.float64)[0, :len(ids) - 1]
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    targets = np.asarray(ids[1:])
    return float(logprobs[np.arange(len(targets)), targets][-len(option):].sum())


def hf_option_logprobs(hf, prompt, option):
    ids = torch.tensor([prompt + option])
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(ids).logits.double()[0, :-1], dim=-1)
    targets = ids[0, 1:]
    token_lp = logprobs[torch.arange(len(targets)), targets]
    return float(token_lp[-len(option):].sum())


def test_prompt_and_continuations():
    assert mc_prompt(RECORD) == "Question: Why?\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    with_passage = mc_prompt({**RECORD, "passage": "Text. "}, instruction="Pick one.")
    assert with_passage.startswith("Pick one.\n\nText.\n\nQuestion: Why?\nA. a")
    assert McFormat().continuation(RECORD, 1) == " B"
    assert McFormat(options="text").continuation(RECORD, 1) == " b"
    assert McFormat(chat=True).continuation(RECORD, 2) == "C"
    assert McFormat(separator=": ").continuation(RECORD, 0) == ": A"
    with pytest.raises(ValueError, match="options must be one of"):
        McFormat(options="number")
    with pytest.raises(ValueError, match="choices"):
        mc_prompt({**RECORD, "choices": list("abcde")})


@pytest.mark.parametrize("options", ["letter", "text"])
def test_scores_equal_hf_pytorch_loglikelihoods(setup, options):
    hf, model, params, tokenizer, records = setup
    items = encode_items(tokenizer, records, McFormat(options=options))
    ours = score_options(model, params, items, batch_size=4, buckets=BUCKETS)
    for item, scores in zip(items, ours):
        slow = [slow_option_logprobs(model, params, item.prompt, option) for option in item.options]
        np.testing.assert_allclose(scores, slow, atol=1e-5, rtol=0)
        reference = [hf_option_logprobs(hf, item.prompt, option) for option in item.options]
        np.testing.assert_allclose(scores, reference, atol=1e-4, rtol=0)  # two float32 forwards of ~200 tokens
        assert int(np.argmax(scores)) == int(np.argmax(reference))


def test_scores_equal_a_slow_per_option_loop_and_hf_with_padding_and_edits(small):
    hf, model, params, items = small
    c = model.config
    edits = {"none": None, "empty": steering.empty(c), "soft": steering.soft(c, {0: [1, 2], 2: [5]}, lam=0.8),
             "hard": steering.force_on(c, [(1, 3)]) + steering.force_off(c, [(0, 0)])}
    scored = {}
    for name, edit in edits.items():
        done = []
        scored[name] = score_options(model, params, items, batch_size=3, buckets=(8, 16, 32), edit=edit,
                                     progress=done.append)
        assert sum(done) == len(items) and all(0 < n <= 3 for n in done)
        for item, scores in zip(items, scored[name]):
            assert scores.dtype == np.float64 and scores.shape == (len(item.options),)
            reference = [slow_option_logprobs(model, params, item.prompt, option, edit) for option in item.options]
            np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=0)
    for item, scores in zip(items, scored["none"]):
        reference = [hf_option_logprobs(hf, item.prompt, option) for option in item.options]
        np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=0)
    assert scored["none"][4][0] == scored["none"][4][1]  # identical options score identically, padded or not
    for name in ("soft", "hard"):
        assert not np.allclose(np.concatenate(scored[name]), np.concatenate(scored["none"]), atol=1e-3)
    alone = [score_options(model, params, [item], batch_size=1, buckets=(64,))[0] for item in items]
    np.testing.assert_allclose(np.concatenate(alone), np.concatenate(scored["none"]), atol=1e-5, rtol=0)
    assert score_options(model, params, [], buckets=(8,)) == []


def test_a_new_edit_reuses_the_compiled_scorer(small):
    _, model, params, items = small
    c = model.config
    traces = []

    def count_traces(logits, moe_layer):  # a static function: runs only while tracing
        traces.append(moe_layer)
        return logits

    def run(edit):
        return score_options(model, params, items[:2], batch_size=2, buckets=(32,),
                             edit=steering.chain(edit, count_traces))

    run(steering.empty(c))
    traced = len(traces)
    run(steering.soft(c, {1: [4]}, lam=0.3))
    run(steering.force_on(c, [(2, 6)]))
    assert traced > 0 and len(traces) == traced


def test_bad_items_are_refused_before_scoring(small):
    _, model, params, items = small
    for bad, match in (([EncodedItem([1, 2], [[3], []])], "non-empty"), ([EncodedItem([], [[3]])], "non-empty"),
                       ([EncodedItem([1, 2], [])], "non-empty"), ([EncodedItem([1, 2], [[3, 128]])], "vocabulary"),
                       ([EncodedItem([1, 2], [[3] * 9])], "max_length")):
        with pytest.raises(ValueError, match=match):
            score_options(model, params, items + bad, buckets=(8, 16, 32), max_length=32 if match != "max_length"
                          else 8)


def test_edits_are_arguments_and_accuracy_is_per_language(setup):
    _, model, params, tokenizer, records = setup
    items = encode_items(tokenizer, records)
    results = evaluate_multiple_choice(model, params, tokenizer, records, batch_size=4, buckets=BUCKETS)
    plain = [np.array(r.detail) for r in results]
    neutral = score_options(model, params, items, batch_size=4, buckets=BUCKETS, edit=steering.empty(4, 8))
    pushed = score_options(model, params, items, batch_size=4, buckets=BUCKETS,
                           edit=steering.force_on(4, 8, [(1, 3), (2, 5)]))
    np.testing.assert_array_equal(np.concatenate(plain), np.concatenate(neutral).astype(np.float32))
    assert not np.allclose(np.concatenate(plain), np.concatenate(pushed))

    assert [r.key for r in results] == [(r["language"], r["id"]) for r in records]
    assert all(r.prediction == int(np.argmax(s)) and r.correct == (r.prediction == r.gold)
               for r, s in zip(results, plain))
    table = {row["language"]: row for row in accuracy_table(results)}
    assert set(table) == {"eng_Latn", "ind_Latn", "arb_Arab", "all"}
    assert table["all"]["n"] == len(records) and table["eng_Latn"]["n"] == 4  # 2 BELEBELE + 2 medical
    assert table["all"]["correct"] == sum(r.correct for r in results)
    text = McFormat(options="text")
    sums = score_options(model, params, encode_items(tokenizer, records[:2], text), batch_size=4, buckets=BUCKETS)
    normalized = evaluate_multiple_choice(model, params, tokenizer, records[:2], text, batch_size=4,
                                          buckets=BUCKETS, length_normalized=True)
    for r, item, total in zip(normalized, encode_items(tokenizer, records[:2], text), sums):
        mean = total / [len(option) for option in item.options]
        np.testing.assert_allclose(r.detail, mean, rtol=1e-6)
        assert r.prediction == int(np.argmax(mean))


def test_long_prompts_are_refused_or_truncated_never_their_continuations(small):
    _, model, params, items = small
    item = items[2]  # a 9-token prompt
    with pytest.raises(ValueError, match="longest bucket"):
        score_options(model, params, [item], buckets=(4,))
    for truncation, kept in (("keep_end", item.prompt[-4:]), ("keep_start", item.prompt[:4])):
        cut = score_options(model, params, [item], buckets=(4,), truncation=truncation)[0]
        np.testing.assert_allclose(cut, score_options(model, params, [EncodedItem(kept, item.options)],
                                                      buckets=(4,))[0], atol=1e-6)
