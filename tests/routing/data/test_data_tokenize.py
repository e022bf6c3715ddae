"""Tokenization with the real OLMoE tokenizer, chat templates, length bucketing and padding."""
import numpy as np
import pytest

from routing.data.tokenize import bucket_batches, encode_texts, length_buckets, load_tokenizer, tokenize_records

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
            "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    return load_tokenizer(shared_data / "tokenizers" / "olmoe" / "tokenizer.json")


def test_plain_text(tokenizer):
    ids = encode_texts(tokenizer, ["Hello world", "Bonjour"], chat=False)
    assert ids[0] == [12092, 1533] and len(ids) == 2
    assert tokenizer.decode(ids[1]) == "Bonjour"


def test_chat_needs_a_template(tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        encode_texts(tokenizer, ["hi"], chat=True)
    [ids] = encode_texts(tokenizer, ["hi"], chat=True, chat_template=TEMPLATE)
    assert tokenizer.decode(ids) == "<|user|>\nhi\n<|assistant|>\n<think></think>"


def test_length_buckets():
    assert length_buckets(512) == (32, 64, 128, 256, 512)
    assert length_buckets(300, min_length=100) == (128, 256, 300)
    assert length_buckets(16, min_length=16) == (16,)
    with pytest.raises(ValueError):
        length_buckets(8, min_length=16)


def test_bucketing_shapes_masks_and_keys():
    sequences = [[1] * 3, [2] * 5, [3] * 2, [4] * 9]
    batches = bucket_batches(sequences, ["a", "b", "c", "d"], batch_size=2, buckets=(4, 8, 16), pad_id=0)
    assert [b.input_ids.shape for b in batches] == [(2, 4), (2, 8), (2, 16)]
    assert [b.keys for b in batches] == [("a", "c"), ("b", None), ("d", None)]
    for batch in batches:
        assert batch.input_ids.dtype == batch.attention_mask.dtype == np.int32
    first = batches[0]
    np.testing.assert_array_equal(first.input_ids, [[0, 1, 1, 1], [0, 0, 3, 3]])  # left padding
    np.testing.assert_array_equal(first.attention_mask, [[0, 1, 1, 1], [0, 0, 1, 1]])
    assert batches[1].attention_mask[1].sum() == 0  # filler row


def test_right_padding():
    [batch] = bucket_batches([[5, 6]], [0], batch_size=1, buckets=(4,), pad_id=9, padding_side="right")
    np.testing.assert_array_equal(batch.input_ids, [[5, 6, 9, 9]])
    np.testing.assert_array_equal(batch.attention_mask, [[1, 1, 0, 0]])


def test_truncation_policy():
    long = [list(range(1, 11))]
    with pytest.raises(ValueError, match="10 tokens"):
        bucket_batches(long, ["x"], batch_size=1, buckets=(4,))
    [start] = bucket_batches(long, ["x"], batch_size=1, buckets=(4,), truncation="keep_start")
    [end] = bucket_batches(long, ["x"], batch_size=1, buckets=(4,), truncation="keep_end")
    assert start.input_ids.tolist() == [[1, 2, 3, 4]] and end.input_ids.tolist() == [[7, 8, 9, 10]]


@pytest.mark.parametrize("kwargs, message", [
    ({"padding_side": "middle"}, "padding_side"), ({"truncation": "cut"}, "truncation"),
    ({"batch_size": 0}, "batch_size"), ({"buckets": ()}, "buckets"),
])
def test_bad_arguments(kwargs, message):
    arguments = {"batch_size": 2, "buckets": (4,), **kwargs}
    with pytest.raises(ValueError, match=message):
        bucket_batches([[1]], ["k"], **arguments)
    with pytest.raises(ValueError, match="keys"):
        bucket_batches([[1]], [], batch_size=1, buckets=(4,))
    with pytest.raises(ValueError, match="no tokens"):
        bucket_batches([[]], ["k"], batch_size=1, buckets=(4,))


def test_tokenize_records(tokenizer):
    records = [{"passage_id": 0, "language": "eng_Latn", "text": "A short passage."},
               {"passage_id": 0, "language": "fra_Latn", "text": "Un passage court, un peu plus long que lui."}]
    batches = tokenize_records(tokenizer, records, chat=True, chat_template=TEMPLATE, batch_size=4,
                               buckets=length_buckets(64, min_length=16), key=("passage_id", "language"))
    keys = [key for batch in batches for key in batch.keys if key is not None]
    assert sorted(keys) == [(0, "eng_Latn"), (0, "fra_Latn")]
    for batch in batches:
        for row, key in enumerate(batch.keys):
            if key is not None:
                ids = batch.input_ids[row][batch.attention_mask[row] == 1]
                assert tokenizer.decode(ids).startswith("<|user|>\n")
                assert batch.attention_mask[row, -1] == 1  # left padded: the last position is real
    plain = tokenize_records(tokenizer, records, chat=False, batch_size=2, buckets=(32,),
                             text=lambda r: r["language"] + ": " + r["text"], key=("language",))
    assert plain[0].keys == (("eng_Latn",), ("fra_Latn",))
