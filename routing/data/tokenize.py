"""Text to token ids and fixed-shape token batches: a model's tokenizer (chat template or plain text) and
length buckets.

Batches have one of a few sequence lengths (the buckets) and always ``batch_size`` rows, so a jitted
consumer compiles once per bucket. Rows shorter than their bucket are padded (left by default, as
generation needs); a bucket's last batch is filled with empty rows whose mask is all 0 and key is None.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from moe.builtin import builtin_path
from routing.data.chat import ChatVariables, Turn, render_chats

PaddingSide = Literal["left", "right"]
Truncation = Literal["error", "keep_start", "keep_end"]
TRUNCATIONS: tuple[str, ...] = get_args(Truncation)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A bare ``tokenizer.json`` file, or a checkpoint folder (or hub id, or built-in model name as in
    ``moe.from_pretrained``) through ``AutoTokenizer``."""
    path = builtin_path(path) or path
    if Path(path).is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    return AutoTokenizer.from_pretrained(str(path))


def encode_conversations(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[Turn]], *,
                         add_generation_prompt: bool, chat_template: str | None = None,
                         variables: ChatVariables = ChatVariables()) -> list[list[int]]:
    """Token ids of each conversation rendered by the chat template (``routing.data.chat.render_chats``),
    tokenized without adding special tokens, since the template writes its own."""
    rendered = render_chats(tokenizer, conversations, add_generation_prompt=add_generation_prompt,
                            chat_template=chat_template, variables=variables)
    return [list(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    chat: bool,
    chat_template: str | None = None,
    chat_variables: ChatVariables = ChatVariables(),
    add_special_tokens: bool = True,
) -> list[list[int]]:
    """Token ids of each text.

    ``chat=True``: the text is one user turn of ``encode_conversations`` (the chat template, ``chat_template``
    or the tokenizer's own, with the generation prompt appended; thinking off, a fixed date).
    ``chat=False``: plain text, with the tokenizer's special tokens if ``add_special_tokens``.
    """
    if not chat:
        return list(tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"])
    return encode_conversations(tokenizer, [[("user", text)] for text in texts], add_generation_prompt=True,
                                chat_template=chat_template, variables=chat_variables)


def length_buckets(max_length: int, min_length: int = 32) -> tuple[int, ...]:
    """Powers of two from ``min_length`` (rounded up to one) below ``max_length``, then ``max_length``."""
    if not 0 < min_length <= max_length:
        raise ValueError(f"need 0 < min_length <= max_length, got {min_length}, {max_length}")
    buckets, length = [], 1 << (min_length - 1).bit_length()
    while length < max_length:
        buckets.append(length)
        length *= 2
    return (*buckets, max_length)


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """int32 ``input_ids`` and ``attention_mask`` [batch, length]; ``keys[i]`` names row i (None: filler)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    keys: tuple[Hashable | None, ...]


def _fit(ids: Sequence[int], key: Hashable, limit: int, truncation: Truncation) -> Sequence[int]:
    """``ids`` cut to ``limit`` tokens as ``truncation`` says."""
    if not ids:
        raise ValueError(f"row {key!r} has no tokens (it would be indistinguishable from a filler row)")
    if len(ids) <= limit:
        return ids
    if truncation == "keep_start":
        return ids[:limit]
    if truncation == "keep_end":
        return ids[-limit:]
    raise ValueError(f"row {key!r} has {len(ids)} tokens, more than the longest bucket ({limit}); "
                     "use longer buckets or truncation='keep_start' or 'keep_end'")


def bucket_batches(
    sequences: Sequence[Sequence[int]],
    keys: Sequence[Hashable],
    *,
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int = 0,
    padding_side: PaddingSide = "left",
    truncation: Truncation = "error",
) -> list[TokenBatch]:
    """Pad token sequences into ``batch_size``-row batches of bucket lengths.

    Each row goes to the shortest bucket that holds it; rows longer than the longest bucket are handled
    by ``truncation``. Batches come bucket by bucket (shortest first), rows in input order within one.
    """
    if len(sequences) != len(keys):
        raise ValueError(f"{len(sequences)} sequences but {len(keys)} keys")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    lengths = sorted(set(buckets))
    if not lengths or lengths[0] < 1:
        raise ValueError(f"buckets must be positive lengths, got {buckets}")
    grouped: dict[int, list[tuple[Sequence[int], Hashable]]] = {length: [] for length in lengths}
    for ids, key in zip(sequences, keys):
        ids = _fit(ids, key, lengths[-1], truncation)
        grouped[next(length for length in lengths if length >= len(ids))].append((ids, key))
    batches = []
    for length, rows in grouped.items():
        for start in range(0, len(rows), batch_size):
            batches.append(pad_rows(rows[start:start + batch_size], batch_size, length, pad_id, padding_side))
    return batches


def pad_rows(rows: Sequence[tuple[Sequence[int], Hashable]], batch_size: int, length: int, pad_id: int,
             padding_side: PaddingSide = "left") -> TokenBatch:
    """One [batch_size, length] batch from up to ``batch_size`` (ids, key) rows, filler rows (key None) last."""
    input_ids = np.full((batch_size, length), pad_id, dtype=np.int32)
    mask = np.zeros((batch_size, length), dtype=np.int32)
    for row, (ids, _) in enumerate(rows):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = ids
        mask[row, span] = 1
    keys = tuple(key for _, key in rows) + (None,) * (batch_size - len(rows))
    return TokenBatch(input_ids=input_ids, attention_mask=mask, keys=keys)


def tokenize_records(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Mapping[str, Any]],
    *,
    chat: bool,
    batch_size: int,
    buckets: Sequence[int],
    text: str | Callable[[Mapping[str, Any]], str] = "text",
    key: Sequence[str] = ("id",),
    padding_side: PaddingSide = "left",
    truncation: Truncation = "error",
    chat_template: str | None = None,
    chat_variables: ChatVariables = ChatVariables(),
    add_special_tokens: bool = True,
    pad_id: int | None = None,
) -> list[TokenBatch]:
    """Records (e.g. from ``read_records``) to bucketed batches.

    ``text`` is a field name or a function of the record; each row's key is the tuple of the ``key``
    fields (e.g. ``("passage_id", "language")``); ``buckets`` e.g. ``length_buckets(512)``. ``pad_id``
    defaults to the tokenizer's pad, else end-of-text, else 0 (padding is masked either way).
    """
    get_text = (lambda record: record[text]) if isinstance(text, str) else text
    ids = encode_texts(tokenizer, [get_text(record) for record in records], chat=chat,
                       chat_template=chat_template, chat_variables=chat_variables,
                       add_special_tokens=add_special_tokens)
    keys = [tuple(record[field] for field in key) for record in records]
    if pad_id is None:
        pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    return bucket_batches(ids, keys, batch_size=batch_size, buckets=buckets,
                          pad_id=pad_id, padding_side=padding_side, truncation=truncation)
