"""Tiny organism folders for tests: ``organism.json`` with a small generator spec, and (``write_tiny_organism``)
a random OLMoE over the organism's words with its word-level tokenizer, written as the organism is shipped."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

import moe
from moe.export import olmoe_config, save_hf
from routing.data.organism import FORMAT
from routing.organism import synthetic
from routing.organism.hf_tokenizer import word_level_files

def tiny_spec(seed: int = 0, task_test: int = 1000, parallel_test: int = 30) -> dict[str, Any]:
    """The default spec's first five languages with few training items (the builders read only test items and
    the base training problems)."""
    spec = synthetic.default_spec(seed)
    languages = [{**entry, "parallel_train": 4, "task_train": 40 if i == 0 else 0, "bitext_train": 0}
                 for i, entry in enumerate(spec["languages"][:5])]
    return {**spec, "parallel_test": parallel_test, "task_test": task_test, "languages": languages}


def organism_json(spec: Mapping[str, Any]) -> str:
    """The text of an ``organism.json`` for ``spec`` (languages and base taken from the corpus it generates)."""
    languages = list(synthetic.build_from_spec(spec).languages)
    return json.dumps({"format": FORMAT, "base": languages[0], "languages": languages, "data": dict(spec),
                       "training": {}, "metrics": {}})


def write_organism_json(folder: Path, spec: Mapping[str, Any]) -> Path:
    """``folder/organism.json`` for ``spec``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "organism.json"
    path.write_text(organism_json(spec))
    return path


def write_tiny_organism(folder: Path, spec: Mapping[str, Any] | None = None, seed: int = 0,
                        num_layers: int = 2) -> Path:
    """A new organism folder written as the organism is shipped (``moe.export.save_hf`` with the word-level
    tokenizer files and organism.json for ``spec``, default `tiny_spec`): a random OLMoE over the organism's
    words, hidden 16, ``num_layers`` layers, 8 experts top-2 (the model's initialisation plus N(0, 0.1) noise, so routing is
    far from uniform)."""
    spec = tiny_spec() if spec is None else spec
    tokens = synthetic.build_tokenizer(synthetic.build_from_spec(spec).languages).tokens
    config = olmoe_config(vocab_size=len(tokens), hidden_size=16, num_layers=num_layers, num_heads=2, num_experts=8, top_k=2,
                          expert_size=16)
    params = moe.MoeTransformer(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    params = tree.unflatten([leaf + 0.1 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)])
    files = {**word_level_files(tokens), "organism.json": organism_json(spec)}
    return save_hf(folder, config, params, extra_files=files, bos_token_id=tokens.index("<bos>"),
                   eos_token_id=tokens.index("<eos>"), pad_token_id=tokens.index("<pad>"))
