"""A model folder for the pipelines: its config without the weights (``moe.load_config``, to check inputs
first), its tokenizer (checked against the model's vocabulary), a content key of its files, then model,
params and end-of-sequence ids."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from transformers import PreTrainedTokenizerBase

import moe
from routing.data.tokenize import load_tokenizer
from routing.outputs.cache import content_key

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_dtype(dtype: str) -> str:
    """``dtype`` if it names one of `DTYPES`; ValueError otherwise."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return dtype


def model_fingerprint(folder: Path) -> str:
    """A content key (``routing.outputs.cache.content_key``) of every file in the model folder, weights
    included, so other weights never reuse stored results; hidden files and folders (download caches, locks)
    are left out. FileNotFoundError if the folder holds no model."""
    moe.load_config(folder)
    files = {str(path.relative_to(folder)): path for path in folder.rglob("*") if path.is_file()}
    return content_key({name: path for name, path in files.items() if not any(
        part.startswith(".") for part in Path(name).parts)})


def _as_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, list) else {int(value)}


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, folder: str | Path | None = None) -> set[int]:
    """End-of-sequence ids: the tokenizer's, plus ``eos_token_id`` of the folder's generation_config.json
    and config.json (an id or a list; chat models often end turns with a token other than the base EOS)."""
    ids = _as_ids(tokenizer.eos_token_id)
    for name in ("generation_config.json", "config.json"):
        path = Path(folder) / name if folder is not None else None
        if path is not None and path.is_file():
            ids |= _as_ids(json.loads(path.read_text()).get("eos_token_id"))
    return ids


@dataclasses.dataclass
class LoadedModel:
    folder: Path
    model: Any
    params: Any
    tokenizer: PreTrainedTokenizerBase
    eos_ids: set[int]

    @property
    def config(self) -> moe.ModelConfig:
        return self.model.config


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, config: moe.ModelConfig, source: str | Path) -> None:
    """ValueError, before any work, if ``tokenizer`` (loaded from ``source``) can produce a token id that the
    model has no embedding for (ids must lie below ``config.vocab_size``)."""
    largest = max(tokenizer.get_vocab().values())
    if largest >= config.vocab_size:
        raise ValueError(f"the tokenizer from {source} has token ids up to {largest}, but the model's vocabulary "
                         f"holds {config.vocab_size} ids: wrong tokenizer for this model? (pass the model's own)")


def load_tokenizer_for(folder: Path, tokenizer: str | Path | None, config: moe.ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer at ``tokenizer`` (a tokenizer.json or folder), else the model folder's, checked against
    the model's vocabulary (``check_vocabulary``)."""
    source = Path(tokenizer) if tokenizer else folder
    if source.is_dir() and not any((source / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {source}; pass --tokenizer")
    try:
        loaded = load_tokenizer(source)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no usable tokenizer at {source} ({err}); pass a tokenizer path") from err
    check_vocabulary(loaded, config, source)
    return loaded


def check_chat_template(tokenizer: PreTrainedTokenizerBase, chat: bool, chat_template: str | None) -> None:
    """ValueError, before any work, when chat prompts are asked for but neither ``chat_template`` nor the
    tokenizer has a chat template."""
    if chat and chat_template is None and not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template: pass --chat-template FILE (a chat_template) or "
                         "--plain (chat=False)")


def load_model(folder: Path, tokenizer: PreTrainedTokenizerBase, dtype: str = "float32") -> LoadedModel:
    """Load the weights of ``folder`` (see ``moe.load_config``) with the given tokenizer."""
    model, params = moe.from_pretrained(folder, dtype=DTYPES[check_dtype(dtype)])
    return LoadedModel(folder, model, params, tokenizer, stop_token_ids(tokenizer, folder))
