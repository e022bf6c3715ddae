"""MGSM: direct-answer prompts (0-shot by default, n-shot optional), greedy generation, flexible-extract scoring.

A prompt asks for the answer directly (no worked solution); exemplars answer with their number only.
Generation runs until EOS or ``max_new_tokens``. The output is cut at the first stop string, if any are
given (none by default; greedy decoding makes cutting afterwards the same as stopping there), and scored
by exact match of the last number of the whole answer ("flexible extract",
``routing.scoring.extract_last_number``), however many paragraphs it has.

Reasoning-channel models (GPT-OSS's harmony format) first write an "analysis" channel, then
``<|channel|>final<|message|>`` and the answer: with ``answer_format="harmony"`` only the final channel
is scored, and an output that never reaches it scores as wrong and is counted apart
(``ItemResult.answered`` False). ``"auto"`` picks "harmony" for chat prompts whose template writes
``<|channel|>``, else "plain" (the whole output).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from transformers import PreTrainedTokenizerBase

from moe.generate import generate
from routing.data.chat import ChatVariables
from routing.data.tokenize import Truncation, bucket_batches, encode_conversations, encode_texts, length_buckets
from routing.eval.results import ItemResult
from routing.scoring import extract_last_number, numbers_match

Exemplar = Mapping[str, Any]  # question, answer_number
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
ANSWER_FORMATS = ("auto", "plain", "harmony")
HARMONY_FINAL = "<|channel|>final<|message|>"
HARMONY_ENDS = ("<|return|>", "<|end|>", "<|call|>")


def check_template(template: str) -> str:
    """``template`` if it formats with ``{question}`` alone; ValueError naming the problem otherwise."""
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"MGSM prompt template {template!r} must use {{question}} and no other field "
                         f"(write {{{{ and }}}} for literal braces): {err!r}") from None
    if "{question}" not in template:
        raise ValueError(f"MGSM prompt template {template!r} has no {{question}} field")
    return template


@dataclasses.dataclass(frozen=True)
class MgsmFormat:
    """Prompt layout and answer extraction. ``template`` takes ``{question}`` (exemplars append
    ``answer_template`` with ``{answer}``). Plain mode joins exemplars and the question with blank lines;
    chat mode makes each exemplar a user/assistant turn pair and the question the last user turn,
    rendered with ``chat_variables``. ``stop``: the output is cut at the first of these strings (none by
    default). ``answer_format``: see the module docstring."""

    template: str = DEFAULT_TEMPLATE
    answer_template: str = " {answer}"
    chat: bool = False
    chat_template: str | None = None
    chat_variables: ChatVariables = ChatVariables()
    instruction: str = ""
    stop: tuple[str, ...] = ()
    answer_format: str = "auto"

    def __post_init__(self) -> None:
        check_template(self.template)
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")
        if not all(self.stop):
            raise ValueError(f"stop strings must be non-empty, got {self.stop!r}")


def format_number(value: float) -> str:
    """``18.0`` -> ``"18"``, ``2.5`` -> ``"2.5"``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _turns(question: str, exemplars: Sequence[Exemplar], fmt: MgsmFormat) -> list[tuple[str, str]]:
    turns = []
    for shot in exemplars:
        turns.append(("user", fmt.template.format(question=shot["question"].strip())))
        turns.append(("assistant", fmt.answer_template.format(answer=format_number(shot["answer_number"])).strip()))
    turns.append(("user", fmt.template.format(question=question.strip())))
    if fmt.instruction:
        turns[0] = ("user", f"{fmt.instruction}\n\n{turns[0][1]}")
    return turns


def mgsm_prompt(question: str, exemplars: Sequence[Exemplar] = (), fmt: MgsmFormat = MgsmFormat()) -> str:
    """The plain-text prompt: instruction (if any), answered exemplars, then the question, blank-line separated."""
    blocks = [fmt.instruction] if fmt.instruction else []
    blocks += [fmt.template.format(question=shot["question"].strip())
               + fmt.answer_template.format(answer=format_number(shot["answer_number"])) for shot in exemplars]
    blocks.append(fmt.template.format(question=question.strip()))
    return "\n\n".join(blocks)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]],
                   exemplars: Mapping[str, Sequence[Exemplar]] | None = None,
                   fmt: MgsmFormat = MgsmFormat()) -> list[list[int]]:
    """Prompt ids per record; ``exemplars`` maps a language to its shots (missing languages: 0-shot)."""
    shots = [(exemplars or {}).get(r["language"], ()) for r in records]
    if fmt.chat:
        return encode_conversations(tokenizer, [_turns(r["question"], s, fmt) for r, s in zip(records, shots)],
                                    add_generation_prompt=True, chat_template=fmt.chat_template,
                                    variables=fmt.chat_variables)
    return encode_texts(tokenizer, [mgsm_prompt(r["question"], s, fmt) for r, s in zip(records, shots)], chat=False)


def gsm8k_exemplars(train: Sequence[Exemplar], n: int, seed: int = 0) -> list[Exemplar]:
    """``n`` GSM8K training problems drawn without replacement (seeded), as English shots."""
    if not 0 <= n <= len(train):
        raise ValueError(f"cannot draw {n} exemplars from {len(train)} problems")
    rng = np.random.default_rng(seed)
    return [train[i] for i in rng.choice(len(train), n, replace=False)]


def split_mgsm_exemplars(records: Sequence[Mapping[str, Any]], n: int, seed: int = 0
                         ) -> tuple[dict[str, list[Exemplar]], list[Mapping[str, Any]]]:
    """MGSM's own shots: ``n`` ids drawn (seeded) from the ids every language shares, used as shots in each
    language and removed from the evaluated records, so no item is its own exemplar."""
    languages = {r["language"] for r in records}
    shared = sorted(set.intersection(*({r["id"] for r in records if r["language"] == lang} for lang in languages)))
    if not 0 <= n <= len(shared):
        raise ValueError(f"cannot draw {n} exemplars from {len(shared)} ids shared by every language")
    chosen = set(np.random.default_rng(seed).choice(shared, n, replace=False).tolist())
    shots = {lang: sorted((r for r in records if r["language"] == lang and r["id"] in chosen), key=lambda r: r["id"])
             for lang in languages}
    return shots, [r for r in records if r["id"] not in chosen]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (whole text if none occurs)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def resolve_answer_format(fmt: MgsmFormat, tokenizer: PreTrainedTokenizerBase) -> str:
    """"plain" or "harmony": ``fmt.answer_format``, with "auto" decided by the chat template."""
    if fmt.answer_format != "auto":
        return fmt.answer_format
    template = (fmt.chat_template or tokenizer.chat_template or "") if fmt.chat else ""
    return "harmony" if "<|channel|>" in str(template) else "plain"


def answer_text(output: str, answer_format: str) -> str | None:
    """The part of ``output`` that is scored: all of it ("plain"); for "harmony", the message of the last
    final channel up to its end marker, or None when the output never reached a final channel."""
    if answer_format == "plain":
        return output
    if answer_format != "harmony":
        raise ValueError(f"answer_format must be 'plain' or 'harmony', got {answer_format!r}")
    start = output.rfind(HARMONY_FINAL)
    return None if start < 0 else cut_at_stop(output[start + len(HARMONY_FINAL):], HARMONY_ENDS)


def score_output(record: Mapping[str, Any], output: str, stop: Sequence[str] = (),
                 answer_format: str = "plain") -> ItemResult:
    """Flexible extract: the last number of the answer (``answer_text`` of ``output`` cut at ``stop``)
    against ``record["answer_number"]``; ``detail`` is the output after the stop cut."""
    text = cut_at_stop(output, stop)
    answer = answer_text(text, answer_format)
    pred = None if answer is None else extract_last_number(answer)
    gold = float(record["answer_number"])
    return ItemResult(record["language"], int(record["id"]), numbers_match(pred, gold), pred, gold, text,
                      answered=answer is not None)


def evaluate_mgsm(model, params, tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]],
                  fmt: MgsmFormat = MgsmFormat(), *, exemplars: Mapping[str, Sequence[Exemplar]] | None = None,
                  eos_ids: set[int] | None = None, max_new_tokens: int = 256, batch_size: int = 8,
                  buckets: Sequence[int] | None = None, max_length: int = 2048,
                  truncation: Truncation = "error", edit=None,
                  progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Greedy answers to MGSM records (id, language, question, answer_number), scored per item.

    ``eos_ids`` defaults to the tokenizer's EOS; ``buckets`` to ``length_buckets(max_length)`` (prompt
    lengths; each compiles the decoding loop once). ``detail`` holds the output text after the stop cut,
    with special tokens (e.g. harmony's channel markers) kept when the answer format is "harmony".
    """
    answer_format = resolve_answer_format(fmt, tokenizer)
    ids = encode_prompts(tokenizer, records, exemplars, fmt)
    eos = eos_ids if eos_ids is not None else {tokenizer.eos_token_id} - {None}
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    buckets = length_buckets(max_length) if buckets is None else buckets
    texts: dict[int, str] = {}
    for batch in bucket_batches(ids, list(range(len(records))), batch_size=batch_size, buckets=buckets,
                                pad_id=pad_id, truncation=truncation):
        out = generate(model, params, jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask),
                       max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad_id, edit=edit)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        real = [(row, key) for row, key in enumerate(batch.keys) if key is not None]
        for row, key in real:
            row_tokens = [t for t in tokens[row, :lengths[row]].tolist() if t not in eos]
            texts[key] = tokenizer.decode(row_tokens, skip_special_tokens=answer_format == "plain")
        if progress:
            progress(len(real))
    return [score_output(record, texts[i], fmt.stop, answer_format) for i, record in enumerate(records)]
