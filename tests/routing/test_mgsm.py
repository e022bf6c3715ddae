"""MGSM: prompt layout, exemplars, flexible-extract scoring on hand examples, generation on a tiny model."""
import numpy as np
import pytest
from tiny_olmoe import tfds_dir, write_tiny_olmoe

import moe
from moe.generate import generate
from routing import steering
from routing.data import Mgsm, load_tokenizer, read_records
from routing.mgsm import (MgsmFormat, encode_prompts, evaluate_mgsm, format_number, gsm8k_exemplars, mgsm_prompt,
                          score_output, split_mgsm_exemplars)

SHOTS = [{"question": "1 + 1?", "answer_number": 2.0}, {"question": " Half of 5? ", "answer_number": 2.5}]
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def record(gold, language="eng_Latn", id=0):
    return {"language": language, "id": id, "answer_number": gold, "question": "q"}


@pytest.mark.parametrize("output, gold, prediction, correct", [
    (" 18", 18, 18.0, True),
    (" The answer is 1,234.", 1234, 1234.0, True),
    (" It costs $1,200 in total", 1200, 1200.0, True),
    (" -5 degrees", -5, -5.0, True),
    (" 3.50", 3.5, 3.5, True),
    (" 7 apples, so 12 in all. Next", 12, 12.0, True),
    (" 18\n\nQuestion: what is 12 + 3?", 18, 18.0, True),  # cut at the stop strings first
    (" 17 Question: 18", 18, 17.0, False),
    (" 答案是42", 42, 42.0, True),
    (" no number here", 3, None, False),
    (" 3,5", 3.5, 5.0, False),
])
def test_flexible_extract_on_hand_examples(output, gold, prediction, correct):
    result = score_output(record(gold), output)
    assert result.prediction == prediction and result.correct is correct and result.gold == float(gold)


def test_prompt_layout_and_exemplars():
    assert mgsm_prompt(" How many? ") == "Question: How many?\nAnswer:"
    assert mgsm_prompt("How many?", SHOTS, MgsmFormat(instruction="Answer with a number.")) == (
        "Answer with a number.\n\nQuestion: 1 + 1?\nAnswer: 2\n\nQuestion: Half of 5?\nAnswer: 2.5"
        "\n\nQuestion: How many?\nAnswer:")
    assert format_number(18.0) == "18" and format_number(-0.25) == "-0.25"
    train = [{"id": i, "question": f"q{i}", "answer_number": i} for i in range(20)]
    assert gsm8k_exemplars(train, 3, seed=1) == gsm8k_exemplars(train, 3, seed=1)
    assert len({shot["id"] for shot in gsm8k_exemplars(train, 20)}) == 20
    with pytest.raises(ValueError, match="cannot draw"):
        gsm8k_exemplars(train, 21)
    records = [{"id": i, "language": lang, "question": f"{lang}{i}", "answer_number": i}
               for lang in ("eng_Latn", "fra_Latn") for i in range(10)] + [
        {"id": 10, "language": "eng_Latn", "question": "extra", "answer_number": 10}]
    shots, rest = split_mgsm_exemplars(records, 2, seed=0)
    chosen = {shot["id"] for shot in shots["fra_Latn"]}
    assert len(chosen) == 2 and chosen == {shot["id"] for shot in shots["eng_Latn"]} and 10 not in chosen
    assert all(shot["question"].startswith("fra") for shot in shots["fra_Latn"])
    assert len(rest) == len(records) - 4 and not any(r["id"] in chosen for r in rest)


def test_chat_prompts_render_shots_as_turns(shared_data):
    tokenizer = load_tokenizer(shared_data / "tokenizers" / "olmoe" / "tokenizer.json")
    fmt = MgsmFormat(chat=True, chat_template=TEMPLATE)
    ids = encode_prompts(tokenizer, [{"language": "fra_Latn", "question": "Combien?"}], {"fra_Latn": SHOTS[:1]}, fmt)
    assert tokenizer.decode(ids[0]) == ("<user>Question: 1 + 1?\nAnswer:</user><assistant>2</assistant>"
                                        "<user>Question: Combien?\nAnswer:</user><assistant>")
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(tokenizer, [{"language": "x", "question": "q"}], fmt=MgsmFormat(chat=True))


def test_greedy_answers_on_a_tiny_model(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_mgsm")
    write_tiny_olmoe(folder, shared_data)
    model, params = moe.from_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    builder = Mgsm(source_dir=shared_data, data_dir=tfds_dir(tmp_path_factory))
    builder.download_and_prepare()
    records = [r for r in read_records(builder, "test") if r["id"] < 2 and r["language"] in ("eng_Latn", "deu_Latn")]
    kwargs = dict(max_new_tokens=4, batch_size=4, buckets=(256,), eos_ids={50279})
    results = evaluate_mgsm(model, params, tokenizer, records, **kwargs)
    assert [r.key for r in results] == [(r["language"], r["id"]) for r in records]
    ids = encode_prompts(tokenizer, records[:1])[0]
    out = generate(model, params, np.array([ids]), max_new_tokens=4, eos_id=50279)
    expected = tokenizer.decode(np.asarray(out.tokens)[0, :int(out.lengths[0])], skip_special_tokens=True)
    assert results[0].detail == score_output(records[0], expected).detail
    neutral = evaluate_mgsm(model, params, tokenizer, records, edit=steering.empty(4, 8), **kwargs)
    assert [r.detail for r in neutral] == [r.detail for r in results]
