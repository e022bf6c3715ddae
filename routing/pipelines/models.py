"""A model folder for evaluation: its config without the weights (to check inputs first), then model,
params, tokenizer (checked against the model's vocabulary) and end-of-sequence ids."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from transformers import PreTrainedTokenizerBase

import moe
from moe.config import ModelConfig
from moe.convert import read_config, resolve_model_path
from routing.data import load_tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def peek_config(path: str | Path) -> tuple[Path, ModelConfig]:
    """The local folder and architecture of a model (HF or converted folder, or hub id), weights unread."""
    folder = resolve_model_path(path)
    return folder, read_config(folder)


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
    def config(self) -> ModelConfig:
        return self.model.config


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, config: ModelConfig, source: str | Path) -> None:
    """ValueError, before any work, if ``tokenizer`` (loaded from ``source``) can produce a token id that the
    model has no embedding for (ids must lie below ``config.vocab_size``)."""
    largest = max(tokenizer.get_vocab().values())
    if largest >= config.vocab_size:
        raise ValueError(f"the tokenizer from {source} has token ids up to {largest}, but the model's vocabulary "
                         f"holds {config.vocab_size} ids: wrong tokenizer for this model? (pass the model's own)")


def load_tokenizer_for(folder: Path, tokenizer: str | Path | None, config: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer at ``tokenizer`` (a tokenizer.json or folder), else the model folder's, checked against
    the model's vocabulary (``check_vocabulary``)."""
    source = Path(tokenizer) if tokenizer else folder
    try:
        loaded = load_tokenizer(source)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no usable tokenizer at {source} ({err}); pass a tokenizer path") from err
    check_vocabulary(loaded, config, source)
    return loaded


def load_model(folder: Path, tokenizer: PreTrainedTokenizerBase, dtype: str = "float32") -> LoadedModel:
    """Load the weights of ``folder`` (see ``peek_config``) with the given tokenizer."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model, params = moe.from_pretrained(folder, dtype=DTYPES[dtype])
    return LoadedModel(folder, model, params, tokenizer, stop_token_ids(tokenizer, folder))
