"""MGSM: direct-answer prompts (0-shot by default, n-shot optional), greedy generation, flexible-extract scoring.

A prompt asks for the answer directly (no worked solution); exemplars answer with their number only.
Outputs are decoded up to EOS, cut at the first stop string (greedy decoding makes cutting afterwards the
same as stopping there), and scored by exact match of the last number in the output ("flexible
extract", ``routing.scoring.extract_last_number``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from transformers import PreTrainedTokenizerBase

from moe.generate import generate
from routing.chat import encode_conversations
from routing.data.tokenize import Truncation, bucket_batches, encode_texts, length_buckets
from routing.evaluation import ItemResult
from routing.scoring import extract_last_number, numbers_match

Exemplar = Mapping[str, Any]  # question, answer_number


@dataclasses.dataclass(frozen=True)
class MgsmFormat:
    """Prompt layout. ``template`` takes ``{question}`` (and ``{answer}`` for exemplars, which append
    ``answer_template``). Plain mode joins exemplars and the question with blank lines; chat mode makes
    each exemplar a user/assistant turn pair and the question the last user turn. ``stop``: output is cut
    at the first of these strings."""

    template: str = "Question: {question}\nAnswer:"
    answer_template: str = " {answer}"
    chat: bool = False
    chat_template: str | None = None
    instruction: str = ""
    stop: tuple[str, ...] = ("\n\n", "Question:")


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
                                    add_generation_prompt=True, chat_template=fmt.chat_template)
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


def score_output(record: Mapping[str, Any], output: str, stop: Sequence[str] = MgsmFormat.stop) -> ItemResult:
    """Flexible extract: the last number of ``output`` (cut at ``stop``) against ``record["answer_number"]``."""
    text = cut_at_stop(output, stop)
    pred = extract_last_number(text)
    gold = float(record["answer_number"])
    return ItemResult(record["language"], int(record["id"]), numbers_match(pred, gold), pred, gold, text)


def evaluate_mgsm(model, params, tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]],
                  fmt: MgsmFormat = MgsmFormat(), *, exemplars: Mapping[str, Sequence[Exemplar]] | None = None,
                  eos_ids: set[int] | None = None, max_new_tokens: int = 256, batch_size: int = 8,
                  buckets: Sequence[int] | None = None, max_length: int = 2048,
                  truncation: Truncation = "error", edit=None,
                  progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Greedy answers to MGSM records (id, language, question, answer_number), scored per item.

    ``eos_ids`` defaults to the tokenizer's EOS; ``buckets`` to ``length_buckets(max_length)`` (prompt
    lengths; each compiles the decoding loop once). ``detail`` holds the output text after the stop cut.
    """
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
            texts[key] = tokenizer.decode(row_tokens, skip_special_tokens=True)
        if progress:
            progress(len(real))
    return [score_output(record, texts[i], fmt.stop) for i, record in enumerate(records)]
