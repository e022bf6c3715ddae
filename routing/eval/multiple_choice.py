"""Multiple choice by log-likelihood (BELEBELE, the medical set): prompts, option scores, accuracy.

Every (item, option) pair is one row: the prompt's tokens followed by the option continuation's tokens.
The two are tokenized separately and concatenated, so the continuation's tokens never merge with the
prompt's last token. An option's score is the sum of the log-probabilities of its continuation tokens
given everything before them (``length_normalized`` takes the mean instead). Rows are left-padded into
length buckets and scored by one jitted function per bucket shape; the routing edit is an argument, so
a new edit of the same structure (e.g. ``routing.steering.empty`` for the baseline, then a soft edit)
reuses the compiled function.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from transformers import PreTrainedTokenizerBase

from moe.inputs import check_inputs
from routing.data.chat import ChatVariables
from routing.data.tokenize import Truncation, bucket_batches, encode_texts, length_buckets
from routing.eval.results import ItemResult
from routing.scoring import choose_option

LETTERS = "ABCD"
OPTION_STYLES = ("letter", "text")


@dataclasses.dataclass(frozen=True)
class McFormat:
    """How an item becomes a prompt and option continuations.

    options: "letter" (the continuation is the option's letter, e.g. " A") or "text" (the option's text).
    separator: put before every continuation; None means " " in plain mode and "" with a chat template
        (the answer then starts the assistant turn).
    chat: render the prompt as one user turn of the chat template (``chat_template`` or the tokenizer's),
        with ``chat_variables`` (``routing.data.chat``).
    instruction: a line put before the item ("" for none).
    """

    options: str = "letter"
    separator: str | None = None
    chat: bool = False
    chat_template: str | None = None
    chat_variables: ChatVariables = ChatVariables()
    instruction: str = ""

    def __post_init__(self) -> None:
        if self.options not in OPTION_STYLES:
            raise ValueError(f"options must be one of {OPTION_STYLES}, got {self.options!r}")

    def continuation(self, record: Mapping[str, Any], option: int) -> str:
        separator = self.separator if self.separator is not None else ("" if self.chat else " ")
        return separator + (LETTERS[option] if self.options == "letter" else record["choices"][option].strip())


def mc_prompt(record: Mapping[str, Any], instruction: str = "") -> str:
    """The prompt of one item: optional instruction, passage (BELEBELE only), question, lettered options.

        {passage}

        Question: {question}
        A. {choice 1}
        ...
        Answer:
    """
    choices = record["choices"]
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"item {record.get('id')!r} has {len(choices)} choices; 2 to {len(LETTERS)} are supported")
    parts = [instruction] if instruction else []
    if record.get("passage"):
        parts.append(record["passage"].strip())
    options = "\n".join(f"{LETTERS[i]}. {choice.strip()}" for i, choice in enumerate(choices))
    parts.append(f"Question: {record['question'].strip()}\n{options}\nAnswer:")
    return "\n\n".join(parts)


@dataclasses.dataclass(frozen=True)
class EncodedItem:
    """Token ids of one item's prompt and of each option continuation."""

    prompt: list[int]
    options: list[list[int]]


def encode_items(tokenizer: PreTrainedTokenizerBase, records: Sequence[Mapping[str, Any]],
                 fmt: McFormat = McFormat()) -> list[EncodedItem]:
    """Prompt and continuation ids of every record (continuations without special tokens)."""
    prompts = encode_texts(tokenizer, [mc_prompt(r, fmt.instruction) for r in records], chat=fmt.chat,
                           chat_template=fmt.chat_template, chat_variables=fmt.chat_variables)
    encoded = []
    for record, prompt in zip(records, prompts):
        texts = [fmt.continuation(record, i) for i in range(len(record["choices"]))]
        options = [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        if not all(options):
            raise ValueError(f"item {record.get('id')!r}: an option continuation has no tokens")
        encoded.append(EncodedItem(list(prompt), options))
    return encoded


@partial(jax.jit, static_argnums=0)
def _continuation_logprobs(model, params, input_ids: jax.Array, attention_mask: jax.Array,
                           continuation_lengths: jax.Array, edit) -> jax.Array:
    """Sum of log p(token | prefix) over the last ``continuation_lengths[b]`` tokens of each left-padded row."""
    logits = model.apply({"params": params}, input_ids, attention_mask, edit).logits[:, :-1]
    targets = input_ids[:, 1:]
    token_lp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - jax.nn.logsumexp(logits, axis=-1)
    target_pos = jnp.arange(1, input_ids.shape[1])
    in_continuation = target_pos[None, :] >= input_ids.shape[1] - continuation_lengths[:, None]
    return jnp.sum(jnp.where(in_continuation, token_lp, 0.0), axis=-1)


def score_options(model, params, items: Sequence[EncodedItem], *, batch_size: int = 8,
                  buckets: Sequence[int] | None = None, max_length: int = 2048, truncation: Truncation = "error",
                  edit=None, progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Per item, the float64 array of its options' summed continuation log-probabilities.

    ``buckets`` defaults to ``length_buckets(max_length)``; ``truncation="keep_end"`` drops the start of
    prompts that do not fit (never the continuation). ``progress`` gets the number of real rows per batch.
    """
    sequences, keys, lengths = [], [], {}
    for i, item in enumerate(items):
        for j, option in enumerate(item.options):
            sequences.append(item.prompt + option)
            keys.append((i, j))
            lengths[(i, j)] = len(option)
    buckets = length_buckets(max_length) if buckets is None else buckets
    if max(lengths.values(), default=0) >= max(buckets):
        raise ValueError(f"an option continuation does not fit the longest bucket ({max(buckets)} tokens)")
    scores = [np.full(len(item.options), np.nan) for item in items]
    for batch in bucket_batches(sequences, keys, batch_size=batch_size, buckets=buckets, truncation=truncation):
        check_inputs(model.config.vocab_size, batch.input_ids, batch.attention_mask)
        cont = np.array([0 if key is None else lengths[key] for key in batch.keys], np.int32)
        out = np.asarray(_continuation_logprobs(model, params, jnp.asarray(batch.input_ids),
                                                jnp.asarray(batch.attention_mask), jnp.asarray(cont), edit))
        real = [(row, key) for row, key in enumerate(batch.keys) if key is not None]
        for row, (i, j) in real:
            scores[i][j] = out[row]
        if progress:
            progress(len(real))
    return scores


def evaluate_multiple_choice(model, params, tokenizer: PreTrainedTokenizerBase,
                             records: Sequence[Mapping[str, Any]], fmt: McFormat = McFormat(), *,
                             length_normalized: bool = False, batch_size: int = 8,
                             buckets: Sequence[int] | None = None, max_length: int = 2048,
                             truncation: Truncation = "error", edit=None,
                             progress: Callable[[int], None] | None = None) -> list[ItemResult]:
    """Accuracy of choosing the highest-scoring option, item by item (records: id, language, choices, label).

    ``detail`` of each result holds the options' scores: summed log-probabilities, or with
    ``length_normalized`` their mean per continuation token.
    """
    items = encode_items(tokenizer, records, fmt)
    scores = score_options(model, params, items, batch_size=batch_size, buckets=buckets, max_length=max_length,
                           truncation=truncation, edit=edit, progress=progress)
    results = []
    for record, item, option_scores in zip(records, items, scores):
        if length_normalized:
            option_scores = [s / len(ids) for s, ids in zip(option_scores, item.options)]
        choice = choose_option([[s] for s in option_scores])
        results.append(ItemResult(record["language"], int(record["id"]), choice == record["label"], choice,
                                  int(record["label"]), [float(s) for s in option_scores]))
    return results
