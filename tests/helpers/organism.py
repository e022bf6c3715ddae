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
