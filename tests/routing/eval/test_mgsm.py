"""MGSM: prompt layout, exemplars, flexible-extract scoring on hand examples (plain and harmony outputs), the
real chat templates of the paper's models, generation on a tiny model."""
import datetime
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import moe
from moe.generate import generate
from routing import steering
from routing.data import ChatVariables, Mgsm, load_tokenizer, read_records
from routing.eval.mgsm import (MgsmFormat, encode_prompts, evaluate_mgsm, format_number, gsm8k_exemplars,
                               mgsm_prompt, resolve_answer_format, score_output, split_mgsm_exemplars)
from routing.eval.tasks import EvalSettings
from tests.helpers.tiny_olmoe import tfds_dir, write_tiny_olmoe

SHOTS = [{"question": "1 + 1?", "answer_number": 2.0}, {"question": " Half of 5? ", "answer_number": 2.5}]
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
TEMPLATES = Path(__file__).parent / "chat_templates"
HARMONY_PREFIX = "<|channel|>analysis<|message|>"


def record(gold, language="eng_Latn", id=0):
    return {"language": language, "id": id, "answer_number": gold, "question": "q"}


@pytest.mark.parametrize("output, gold, prediction, correct", [
    (" 18", 18, 18.0, True),
    (" The answer is 1,234.", 1234, 1234.0, True),
    (" It costs $1,200 in total", 1200, 1200.0, True),
    (" -5 degrees", -5, -5.0, True),
    (" 3.50", 3.5, 3.5, True),
    (" 7 apples, so 12 in all. Next", 12, 12.0, True),
    # multi-paragraph answers: the last number of the whole answer, not of its first paragraph
    (" She has 16 eggs and eats 3, so 16 - 3 - 4 = 9 remain.\n\nAnswer: 18", 18, 18.0, True),
    ("Answer: 18", 18, 18.0, True),
    (" First, 2 + 3 = 5.\n\nThen 5 * 4 = 20.\n\nSo the total is 1,234,567 dollars.", 1234567, 1234567.0, True),
    (" It drops by 12 degrees.\n\nThe temperature is -7 now.", -7, -7.0, True),
    (" 18\n\nQuestion: what is 12 + 3?", 18, 3.0, False),  # no stop string by default: the whole output
    (" 17 Question: 18", 18, 18.0, True),
    (" 答案是42", 42, 42.0, True),
    (" no number here", 3, None, False),
    ("", 3, None, False),
    (" 3,5", 3.5, 5.0, False),
])
def test_flexible_extract_on_hand_examples(output, gold, prediction, correct):
    result = score_output(record(gold), output)
    assert result.prediction == prediction and result.correct is correct and result.gold == float(gold)
    assert result.answered and result.detail == output


@pytest.mark.parametrize("output, stop, prediction", [
    (" 18\n\nQuestion: what is 12 + 3?", ("\n\n", "Question:"), 18.0),
    (" 17 Question: 18", ("\n\n", "Question:"), 17.0),
    (" 9 remain.\n\nAnswer: 18", ("\n\n",), 9.0),
    (" 9 remain.\n\nAnswer: 18", ("Question:",), 18.0),
])
def test_stop_strings_cut_the_output_first(output, stop, prediction):
    result = score_output(record(18), output, stop)
    assert result.prediction == prediction and result.detail == output[:len(result.detail)]


@pytest.mark.parametrize("output, prediction, answered", [
    (HARMONY_PREFIX + "16 - 3 - 4 = 9, times 2 is 18.<|end|><|start|>assistant<|channel|>final<|message|>"
     "**18**", 18.0, True),
    (HARMONY_PREFIX + "So 18.<|end|><|start|>assistant<|channel|>final<|message|>The answer is 1,018."
     "<|return|>", 1018.0, True),
    (HARMONY_PREFIX + "x<|end|><|start|>assistant<|channel|>final<|message|>-4<|end|>"
     "<|start|>assistant<|channel|>final<|message|>18<|end|> 99", 18.0, True),  # the last final channel only
    (HARMONY_PREFIX + "We need 16 - 3 - 4 = 9, then 9 * 2 = 18", None, False),  # cut off while reasoning
    (HARMONY_PREFIX + "18<|end|><|start|>assistant<|channel|>final<|message|>no idea", None, True),
    ("18", None, False),  # no channel at all
])
def test_harmony_outputs_are_scored_on_their_final_channel(output, prediction, answered):
    result = score_output(record(18), output, answer_format="harmony")
    assert result.prediction == prediction and result.answered is answered
    assert result.correct is (prediction == 18.0)


def test_reasoning_cut_off_before_the_final_channel_is_wrong_and_counted():
    """Its analysis ends with the right number, which scoring the whole output would count."""
    output = HARMONY_PREFIX + "We need 16 - 3 - 4 = 9, then 9 * 2 = 18"
    assert score_output(record(18), output).correct
    harmony = score_output(record(18), output, answer_format="harmony")
    assert not harmony.correct and not harmony.answered and harmony.prediction is None


def _bare_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: any text round-trips through its ids exactly."""
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))},
                                     merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


GPT_OSS_SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
                  "Knowledge cutoff: 2024-06\nCurrent date: {date}\n\nReasoning: {effort}\n\n"
                  "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>")
RENDERED = {  # one exemplar (Q1 -> 2), then the question Q2, with the generation prompt
    "gpt_oss_20b": GPT_OSS_SYSTEM.format(date="2025-01-01", effort="medium")
    + "<|start|>user<|message|>Q1<|end|><|start|>assistant<|channel|>final<|message|>2<|end|>"
      "<|start|>user<|message|>Q2<|end|><|start|>assistant",
    "qwen3_30b_a3b": "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n"
                     "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "phi35_moe_instruct": "<|user|>\nQ1<|end|>\n<|assistant|>\n2<|end|>\n<|user|>\nQ2<|end|>\n<|assistant|>\n",
    "olmoe_0125_instruct": "<|endoftext|><|user|>\nQ1\n<|assistant|>\n2<|endoftext|>\n<|user|>\nQ2\n"
                           "<|assistant|>\n",
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_real_chat_templates_render_fixed_prompts(name):
    """The released templates of Qwen3-30B-A3B, Phi-3.5-MoE, gpt-oss-20b and OLMoE-0125-Instruct (see
    chat_templates/SOURCES.md): thinking off, the fixed date, and the answer format each implies."""
    tok = _bare_tokenizer()
    fmt = MgsmFormat(template="{question}", chat=True, chat_template=(TEMPLATES / f"{name}.jinja").read_text())
    ids = encode_prompts(tok, [{"language": "x", "question": "Q2"}], {"x": [{"question": "Q1", "answer_number": 2}]},
                         fmt)
    assert ids and tok.decode(ids[0]) == RENDERED[name]
    assert resolve_answer_format(fmt, tok) == ("harmony" if name == "gpt_oss_20b" else "plain")
    assert resolve_answer_format(MgsmFormat(chat=False, chat_template=fmt.chat_template), tok) == "plain"


def test_date_and_reasoning_effort_are_options_not_today():
    tok = _bare_tokenizer()
    template = (TEMPLATES / "gpt_oss_20b.jinja").read_text()

    def prompt(**variables) -> str:
        fmt = MgsmFormat(chat=True, chat_template=template, chat_variables=ChatVariables(**variables))
        return tok.decode(encode_prompts(tok, [{"language": "x", "question": "Q"}], fmt=fmt)[0])

    default = prompt()
    assert default == prompt() and "Current date: 2025-01-01\n" in default and "Reasoning: medium" in default
    assert datetime.date.today().isoformat() not in default or datetime.date.today().isoformat() == "2025-01-01"
    assert "Current date: 2024-02-29\n" in prompt(date="2024-02-29")
    assert "Reasoning: low\n" in prompt(reasoning_effort="low")
    with pytest.raises(ValueError, match="chat date must be YYYY-MM-DD"):
        ChatVariables(date="2024-02-30")
    dated = "{{ strftime_now('%d %B %Y') }}|{{ date_string }}|{{ strftime_now(fmt) }}"
    fmt = MgsmFormat(chat=True, chat_template=dated.replace("|{{ strftime_now(fmt) }}", ""))
    assert tok.decode(encode_prompts(tok, [{"language": "x", "question": "Q"}], fmt=fmt)[0]) == \
        "01 January 2025|01 Jan 2025"
    with pytest.raises(Exception, match="not a literal format"):  # a format the template computes: refused
        encode_prompts(tok, [{"language": "x", "question": "Q"}], fmt=MgsmFormat(chat=True, chat_template=dated))


def test_protocol_options_are_checked_and_recorded():
    settings = EvalSettings(template="Q: {question}\nA:", instruction="Answer with a number.", stop=["\n\n"],
                            answer_format="harmony", chat_date="2024-05-06", reasoning_effort="high")
    fmt = settings.mgsm_format()
    assert (fmt.template, fmt.instruction, fmt.stop, fmt.answer_format) == ("Q: {question}\nA:",
                                                                            "Answer with a number.", ("\n\n",),
                                                                            "harmony")
    assert fmt.chat_variables == ChatVariables("2024-05-06", "high") == settings.mc_format().chat_variables
    assert EvalSettings(chat=True, chat_template=TEMPLATE).resolved(_bare_tokenizer()).answer_format == "plain"
    for bad, message in [(dict(template="Q: {q}"), "must use {question}"), (dict(template="Q"), "no {question}"),
                         (dict(stop=("",)), "non-empty"), (dict(answer_format="last"), "answer_format"),
                         (dict(chat_date="2024/01/01"), "YYYY-MM-DD"), (dict(reasoning_effort=" "), "non-empty")]:
        with pytest.raises(ValueError, match=message):
            EvalSettings(**bad)


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
    kwargs = dict(max_new_tokens=4, batch_size=3, buckets=(256,), eos_ids={50279})
    done = []
    results = evaluate_mgsm(model, params, tokenizer, records, progress=done.append, **kwargs)
    assert done == [3, 1]  # items per batch: 4 items in batches of 3
    assert [r.key for r in results] == [(r["language"], r["id"]) for r in records]
    ids = encode_prompts(tokenizer, records[:1])[0]
    out = generate(model, params, np.array([ids]), max_new_tokens=4, eos_id=50279)
    expected = tokenizer.decode(np.asarray(out.tokens)[0, :int(out.lengths[0])], skip_special_tokens=True)
    assert results[0].detail == score_output(records[0], expected).detail
    neutral = evaluate_mgsm(model, params, tokenizer, records, edit=steering.empty(4, 8), **kwargs)
    assert [r.detail for r in neutral] == [r.detail for r in results]
    # the tiny model never writes a harmony final channel: every item is counted unanswered, none is right
    harmony = evaluate_mgsm(model, params, tokenizer, records, MgsmFormat(answer_format="harmony"), **kwargs)
    assert [r.detail for r in harmony] == [r.detail for r in results]
    assert not any(r.answered or r.correct for r in harmony) and all(r.answered for r in results)
