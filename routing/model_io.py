"""A model folder for evaluation: its config without the weights (to check inputs first), then model,
params, tokenizer and end-of-sequence ids."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from transformers import PreTrainedTokenizerBase

import moe
from moe.config import ModelConfig
from moe.convert import CONFIG_FILE, read_hf_config, resolve_model_path
from routing.data import load_tokenizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def peek_config(path: str | Path) -> tuple[Path, ModelConfig]:
    """The local folder and architecture of a model (HF or converted folder, or hub id), weights unread."""
    folder = resolve_model_path(path)
    if (folder / CONFIG_FILE).is_file():
        return folder, ModelConfig.from_json((folder / CONFIG_FILE).read_text())
    return folder, read_hf_config(folder)


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


def load_tokenizer_for(folder: Path, tokenizer: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer at ``tokenizer`` (a tokenizer.json or folder), else the model folder's."""
    source = Path(tokenizer) if tokenizer else folder
    try:
        return load_tokenizer(source)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no usable tokenizer at {source} ({err}); pass a tokenizer path") from err


def load_model(folder: Path, tokenizer: PreTrainedTokenizerBase, dtype: str = "float32") -> LoadedModel:
    """Load the weights of ``folder`` (see ``peek_config``) with the given tokenizer."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model, params = moe.from_pretrained(folder, dtype=DTYPES[dtype])
    return LoadedModel(folder, model, params, tokenizer, stop_token_ids(tokenizer, folder))
