"""The word-level HF tokenizer files: AutoTokenizer loads them and gives the ids of the token list."""
import json

import pytest
from transformers import AutoTokenizer

from routing.data.tokenize import load_tokenizer, tokenize_records
from routing.organism.hf_tokenizer import save_word_level_tokenizer, word_level_files

TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<answer>", "0", "1", "12", "the", "cat", "sat", "on", "mat", ".",
          "dog's", "ü-word"]


def ids(text: str) -> list[int]:
    """The reference: each word's position in TOKENS, <unk> (3) for others, after one <bos> (1)."""
    return [1] + [TOKENS.index(w) if w in TOKENS else 3 for w in text.split()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = save_word_level_tokenizer(tmp_path_factory.mktemp("tok"), TOKENS)
    return AutoTokenizer.from_pretrained(folder)


def test_ids_are_list_positions_and_specials_are_set(tokenizer):
    assert tokenizer.convert_tokens_to_ids(TOKENS) == list(range(len(TOKENS)))
    assert len(tokenizer) == len(TOKENS)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1,
                                                                                                                 2, 3)
    assert tokenizer.chat_template is None


@pytest.mark.parametrize("text", ["the cat sat on the mat .", "  the\tcat \n 12 <answer> 1", "dog's ü-word ."])
def test_encode_decode_round_trip(tokenizer, text):
    encoded = tokenizer(text)["input_ids"]
    assert encoded == ids(text)  # one <bos>, then one id per whitespace-separated word
    assert tokenizer.decode(encoded) == "<bos> " + " ".join(text.split())
    assert tokenizer.decode(encoded, skip_special_tokens=True) == " ".join(text.split())
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids(text)[1:]


def test_unknown_words_become_unk(tokenizer):
    assert tokenizer("the zebra sat Cat")["input_ids"] == [1, 8, 3, 10, 3]
    assert tokenizer.decode(tokenizer("zebra")["input_ids"], skip_special_tokens=True) == ""


def test_padding_sides(tokenizer):
    left = tokenizer(["the cat", "the cat sat on"], padding=True)
    assert left["input_ids"] == [[0, 0] + ids("the cat"), ids("the cat sat on")]
    assert left["attention_mask"] == [[0, 0, 1, 1, 1], [1] * 5]
    right = tokenizer(["the cat", "the cat sat on"], padding=True, padding_side="right")
    assert right["input_ids"][0] == ids("the cat") + [0, 0]


def test_pipeline_tokenization_helpers(tmp_path):
    save_word_level_tokenizer(tmp_path, TOKENS, padding_side="right", model_max_length=32)
    tok = load_tokenizer(tmp_path)
    assert tok.padding_side == "right" and tok.model_max_length == 32
    records = [{"id": "a", "text": "the cat sat"}, {"id": "b", "text": "mat . zebra on the mat"}]
    batches = tokenize_records(tok, records, chat=False, batch_size=2, buckets=[4, 8])
    assert [b.keys for b in batches] == [(("a",), None), (("b",), None)]
    assert batches[0].input_ids.tolist() == [ids("the cat sat"), [0] * 4]
    assert batches[1].input_ids[0].tolist() == [0] + ids("mat . zebra on the mat")
    assert batches[1].attention_mask[0].tolist() == [0] + [1] * 7


def test_files_and_bad_token_lists(tmp_path):
    files = word_level_files(TOKENS)
    assert sorted(files) == ["tokenizer.json", "tokenizer_config.json"]
    assert json.loads(files["tokenizer.json"])["model"]["type"] == "WordLevel"
    with pytest.raises(ValueError, match="distinct; repeated: \\['cat'\\]"):
        word_level_files(TOKENS + ["cat"])
    with pytest.raises(ValueError, match="without whitespace"):
        word_level_files(TOKENS + ["two words"])
    with pytest.raises(ValueError, match="without whitespace"):
        word_level_files(TOKENS + [""])
    with pytest.raises(ValueError, match="not in the token list: eos_token '</s>'"):
        word_level_files(TOKENS, eos="</s>")
    with pytest.raises(ValueError, match="padding_side"):
        word_level_files(TOKENS, padding_side="middle")
