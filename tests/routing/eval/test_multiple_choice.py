"""Multiple choice by log-likelihood: prompts, parity with HF PyTorch log-likelihoods, edits, accuracy."""
import numpy as np
import pytest
import torch

import moe
from routing import steering
from routing.data import Belebele, MedicalMcq, load_tokenizer, read_records
from routing.eval.results import accuracy_table
from routing.eval.multiple_choice import McFormat, encode_items, evaluate_multiple_choice, mc_prompt, score_options
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
        reference = [hf_option_logprobs(hf, item.prompt, option) for option in item.options]
        np.testing.assert_allclose(scores, reference, atol=1e-4, rtol=0)
        assert int(np.argmax(scores)) == int(np.argmax(reference))


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


def test_an_option_longer_than_the_buckets_is_refused(setup):
    _, model, params, tokenizer, records = setup
    items = encode_items(tokenizer, records[:1], McFormat(options="text"))
    with pytest.raises(ValueError, match="longest bucket"):
        score_options(model, params, items, buckets=(1,))
