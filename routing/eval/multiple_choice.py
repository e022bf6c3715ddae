"""Multiple choice by log-likelihood (BELEBELE, the medical set): prompts, option scores, accuracy.

An option's score is the sum of the log-probabilities of its continuation tokens given the prompt and the
tokens before them (``length_normalized`` takes the mean instead). Prompt and continuation are tokenized
separately and concatenated, so the continuation's tokens never merge with the prompt's last token.

Each item's prompt runs once, into a KV cache that all of its options continue; logits and their
log-softmax are computed only where an option token is scored. Prompts are left-padded into length
buckets and continuations right-padded to power-of-two widths, scored by one jitted function per shape.
The routing edit is an argument, so a new edit of the same structure (e.g. ``routing.steering.empty`` for
the baseline, then a soft edit) reuses the compiled function.
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
from moe.kv_cache import KVCache
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


def _fed_width(longest_option: int) -> int:
    """Padded number of option tokens fed after the prompt: 0 for one-token options, else a power of two >=
    ``longest_option - 1`` (the last token of an option is scored, never fed)."""
    return 0 if longest_option <= 1 else 1 << (longest_option - 2).bit_length()


@partial(jax.jit, static_argnums=0)
def _option_token_logprobs(model, params, input_ids: jax.Array, attention_mask: jax.Array, options: jax.Array,
                           lengths: jax.Array, edit) -> jax.Array:
    """[batch, k, 1 + fed] log p of each option token after its row's left-padded prompt (0 on padding).

    options [batch, k, 1 + fed] holds option tokens (right-padded), lengths [batch, k] their counts. The
    prompt runs once into a KV cache, with logits at its last position only (they score every option's
    first token); each option's remaining tokens then run on that cache, options one after another.
    """
    batch, prompt_len = input_ids.shape
    fed = options.shape[2] - 1
    cache = KVCache.create(model.config, batch, prompt_len + fed, model.dtype)
    prompt = model.apply({"params": params}, input_ids, attention_mask, edit, cache=cache, last_only=True)
    last = prompt.logits[:, 0]
    first = jnp.take_along_axis(last, options[:, :, 0], axis=-1) - jax.nn.logsumexp(last, axis=-1, keepdims=True)
    if not fed:
        return first[..., None]

    def rest(option_and_length: tuple[jax.Array, jax.Array]) -> jax.Array:
        option, length = option_and_length  # [batch, 1 + fed], [batch]
        real = jnp.arange(fed)[None, :] < length[:, None] - 1
        logits = model.apply({"params": params}, option[:, :-1], real.astype(jnp.int32), edit,
                             cache=prompt.cache).logits
        target = jnp.take_along_axis(logits, option[:, 1:, None], axis=-1)[..., 0]
        return jnp.where(real, target - jax.nn.logsumexp(logits, axis=-1), 0.0)

    later = jnp.swapaxes(jax.lax.map(rest, (jnp.swapaxes(options, 0, 1), lengths.T)), 0, 1)
    return jnp.concatenate([first[..., None], later], axis=-1)


def score_options(model, params, items: Sequence[EncodedItem], *, batch_size: int = 8,
                  buckets: Sequence[int] | None = None, max_length: int = 2048, truncation: Truncation = "error",
                  edit=None, progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Per item, the float64 array of its options' summed continuation log-probabilities.

    One forward per item for the prompt: prompts are left-padded into ``buckets`` (padded prompt lengths,
    default ``length_buckets(max_length)``) and run once into a KV cache that every option continues; the
    log-softmax is taken only where a continuation token is scored. ``truncation="keep_end"`` drops the
    start of prompts longer than the longest bucket, ``"keep_start"`` their end; continuations are never
    cut, and one longer than ``max_length`` is refused. ``progress`` gets the number of items per batch.
    """
    if any(not item.prompt or not item.options or not all(item.options) for item in items):
        raise ValueError("every item needs a non-empty prompt and at least one non-empty option")
    longest = max((len(option) for item in items for option in item.options), default=0)
    if longest > max_length:
        raise ValueError(f"an option continuation has {longest} tokens, more than max_length ({max_length})")
    for item in items:
        check_inputs(model.config.vocab_size, np.asarray([item.prompt + sum(item.options, [])], np.int32))
    buckets = length_buckets(max_length) if buckets is None else buckets
    k = max((len(item.options) for item in items), default=0)
    scores = [np.full(len(item.options), np.nan) for item in items]
    for batch in bucket_batches([item.prompt for item in items], range(len(items)), batch_size=batch_size,
                                buckets=buckets, truncation=truncation):
        real = [(row, i) for row, i in enumerate(batch.keys) if i is not None]
        width = 1 + _fed_width(max(len(option) for _, i in real for option in items[i].options))
        options = np.zeros((batch_size, k, width), np.int32)
        lengths = np.zeros((batch_size, k), np.int32)
        for row, i in real:
            for j, option in enumerate(items[i].options):
                options[row, j, :len(option)] = option
                lengths[row, j] = len(option)
        token_lp = _option_token_logprobs(model, params, jnp.asarray(batch.input_ids),
                                          jnp.asarray(batch.attention_mask), jnp.asarray(options),
                                          jnp.asarray(lengths), edit)
        totals = np.asarray(token_lp, np.float64).sum(axis=-1)  # summed in float64: sums reach -200 and more
        for row, i in real:
            scores[i] = totals[row, :len(items[i].options)]
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
