"""Tiny organism folders for tests: ``organism.json`` with a small generator spec, and (``write_tiny_organism``)
a random OLMoE over the organism's words with its word-level tokenizer."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from routing.organism import synthetic

FORMAT = "moe-routing organism/1"


def legacy_build_from_spec(spec: Mapping[str, Any]) -> synthetic.Corpus:
    """``build_from_spec`` for the generator of today (until helper T's lands): seed and sizes."""
    sizes = synthetic.CorpusSizes(parallel_train=spec["parallel_train"], parallel_test=spec["parallel_test"],
                                  task_train=spec["task_train"], task_test=spec["task_test"])
    return synthetic.build_corpus(spec["seed"], sizes)


def tiny_spec(seed: int = 0, task_test: int = 1000, parallel_test: int = 30) -> dict[str, Any]:
    """A spec with few training items (the builders read only test items and the base training problems)."""
    return {"seed": seed, "parallel_train": {"base": 4}, "parallel_test": parallel_test,
            "task_train": {"base": 40}, "task_test": task_test}


def write_organism_json(folder: Path, spec: Mapping[str, Any]) -> Path:
    """``folder/organism.json`` for ``spec`` (languages and base taken from the corpus it generates)."""
    languages = list(synthetic.build_from_spec(spec).languages)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "organism.json"
    path.write_text(json.dumps({"format": FORMAT, "base": languages[0], "languages": languages, "data": dict(spec),
                                "training": {}, "metrics": {}}))
    return path


def write_word_tokenizer(folder: Path, tokens: list[str]) -> None:
    """A WordLevel ``tokenizer.json`` (ids = positions in ``tokens``, whitespace split, ``<bos>`` prepended)
    with its ``tokenizer_config.json`` (until helper E's writer lands)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[
        ("<bos>", tokens.index("<bos>"))])
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)


def write_tiny_organism(folder: Path, spec: Mapping[str, Any] | None = None, seed: int = 0) -> Path:
    """An organism folder: organism.json for ``spec`` (default `tiny_spec`), a random OLMoE (hidden 16, 2 layers,
    8 experts top-2) over the organism's words, and its word-level tokenizer."""
    from tests.helpers.hf_reference import tiny_model

    spec = tiny_spec() if spec is None else spec
    write_organism_json(folder, spec)
    tokens = list(synthetic.build_tokenizer(synthetic.build_from_spec(spec).languages).tokens)
    tiny_model("olmoe", seed=seed, vocab_size=len(tokens), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
               eos_token_id=2).save_pretrained(folder)
    write_word_tokenizer(folder, tokens)
    return folder
