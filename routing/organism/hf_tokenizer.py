"""A word-level tokenizer as HF tokenizer files, so that `transformers.AutoTokenizer` loads it.

The token with id i is ``tokens[i]``. Text is split on whitespace, each word is one token (an unknown word is
the unk token), and the post-processor puts the bos token in front (once per text, with
``add_special_tokens``). Decoding joins the tokens with single spaces (the `tokenizers` default when no
decoder is set). The pad, bos, eos and unk tokens are special (``skip_special_tokens`` drops them); no chat
template is written.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

from moe.atomic import atomic_path


def word_level_files(tokens: Sequence[str], *, pad: str = "<pad>", bos: str = "<bos>", eos: str = "<eos>",
                     unk: str = "<unk>", padding_side: str = "left",
                     model_max_length: int | None = None) -> dict[str, str]:
    """{file name: text} of tokenizer.json and tokenizer_config.json for the word list `tokens` (e.g. the
    `extra_files` of `moe.export.save_hf`); ValueError for repeated, empty or space-holding tokens, or a
    special token not in the list."""
    tokens = list(tokens)
    bad = sorted({t for t in tokens if not isinstance(t, str) or t.split() != [t]}, key=repr)
    if bad:
        raise ValueError(f"tokens must be non-empty words without whitespace: {bad[:5]}")
    repeated = sorted(t for t, n in Counter(tokens).items() if n > 1)
    if repeated:
        raise ValueError(f"tokens must be distinct; repeated: {repeated[:5]}")
    specials = {"pad_token": pad, "bos_token": bos, "eos_token": eos, "unk_token": unk}
    missing = [f"{role} {token!r}" for role, token in specials.items() if token not in tokens]
    if missing:
        raise ValueError(f"special tokens not in the token list: {', '.join(missing)}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, tokens.index(bos))])
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in dict.fromkeys(specials.values())])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "padding_side": padding_side,
              "clean_up_tokenization_spaces": False}
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return {"tokenizer.json": tokenizer.to_str(pretty=True), "tokenizer_config.json": json.dumps(config, indent=2)}


def save_word_level_tokenizer(folder: str | Path, tokens: Sequence[str], **options) -> Path:
    """Write `word_level_files(tokens, **options)` into `folder` (created if needed), each file atomically."""
    files = word_level_files(tokens, **options)
    for name, text in files.items():
        with atomic_path(Path(folder) / name) as temp:
            temp.write_text(text, encoding="utf-8")
    return Path(folder)
