"""A word-level tokenizer for the synthetic corpus: one id per whitespace-separated word.

Ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3, <answer>=4, then the answer numbers "0".."20" (also the digits
of questions), then every other word of every language, sorted. There are no language tags: a text's
words alone say its language. `moe.export` writes the same token list as HF tokenizer files.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from routing.organism.synthetic.languages import Language
from routing.organism.synthetic.task import ANSWER_MARKER, answer_tokens

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK, ANSWER_MARKER)


class Tokenizer:
    """Maps words to ids and back; `tokens[i]` is the word with id i."""

    def __init__(self, tokens: Sequence[str]):
        if tuple(tokens[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"tokens must start with {SPECIALS}")
        if len(set(tokens)) != len(tokens) or any(not t or t.split() != [t] for t in tokens):
            raise ValueError("tokens must be distinct, non-empty and free of whitespace")
        self.tokens = tuple(tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.answer_id = range(len(SPECIALS))

    @classmethod
    def from_words(cls, words: Iterable[str]) -> Tokenizer:
        """Specials, answer numbers, then `words` (sorted, deduplicated)."""
        head = [*SPECIALS, *answer_tokens()]
        return cls(head + sorted(set(words) - set(head)))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_id(self, token: str) -> int:
        return self._ids.get(token, self.unk_id)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of the whitespace-separated words (unknown words -> <unk>), optionally framed by bos/eos."""
        ids = [self.token_id(w) for w in text.split()]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int], skip_control: bool = False) -> str:
        """Words joined by single spaces; `skip_control` drops <pad>, <bos> and <eos>."""
        control = {self.pad_id, self.bos_id, self.eos_id} if skip_control else set()
        return " ".join(self.tokens[i] for i in map(int, ids) if i not in control)

    def encode_batch(self, texts: Sequence[str], pad_to: int | None = None, left_pad: bool = True,
                     bos: bool = False, eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """int32 ids [len(texts), pad_to] padded with <pad> (on the left by default) and an int32
        mask (1 on real tokens); `pad_to` None means the longest text. Longer texts raise ValueError."""
        rows = [self.encode(t, bos=bos, eos=eos) for t in texts]
        width = max(map(len, rows), default=0) if pad_to is None else pad_to
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(rows), width), dtype=np.int32)
        for r, row in enumerate(rows):
            if len(row) > width:
                raise ValueError(f"text {r} has {len(row)} tokens, more than pad_to={width}")
            span = slice(width - len(row), width) if left_pad else slice(0, len(row))
            ids[r, span] = row
            mask[r, span] = 1
        return ids, mask

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.tokens == other.tokens


def build_tokenizer(languages: Mapping[str, Language]) -> Tokenizer:
    """The tokenizer covering every word of `languages` (e.g. `Corpus.languages`)."""
    return Tokenizer.from_words(w for lang in languages.values() for w in lang.vocabulary())
