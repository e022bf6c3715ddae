"""The generator spec: a JSON-able mapping from which `build_from_spec` regenerates the corpus exactly.

    {"seed": 0, "digits": true, "task_max_steps": 1, "parallel_test": 400, "task_test": 1000,
     "languages": [{"code": "base", "order": "SVO", "adposition": "pre", "adjective": "pre", "shared": 1.0,
                    "parallel_train": 3000, "task_train": 20000, "bitext_train": 0}, ...]}

The first language is the base (the reference). Each language entry holds its `LanguageSpec` fields and its
training sizes (parallel sentences, task items, bitext pairs with the base); every key is required.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from routing.organism.synthetic.corpus import Corpus, CorpusSizes, build_corpus
from routing.organism.synthetic.languages import LanguageSpec, make_languages

SPEC_KEYS = ("seed", "digits", "task_max_steps", "parallel_test", "task_test", "languages")
LANGUAGE_KEYS = ("code", "order", "adposition", "adjective", "shared", "parallel_train", "task_train",
                 "bitext_train")


def _language(code: str, order: str = "SVO", adposition: str = "pre", adjective: str = "pre", shared: float = 0.0,
              parallel_train: int = 3000, task_train: int = 100, bitext_train: int = 1000) -> dict[str, Any]:
    return {"code": code, "order": order, "adposition": adposition, "adjective": adjective, "shared": shared,
            "parallel_train": parallel_train, "task_train": task_train, "bitext_train": bitext_train}


DEFAULT_SPEC: dict[str, Any] = {
    "seed": 0, "digits": True, "task_max_steps": 1, "parallel_test": 400, "task_test": 1000,
    "languages": [
        _language("base", shared=1.0, task_train=20000, bitext_train=0),
        _language("shared75", shared=0.75),
        _language("shared50", shared=0.5),
        _language("shared25", shared=0.25),
        _language("clone"),
        _language("nounadj", adjective="post"),
        _language("sov", order="SOV", adposition="post"),
        _language("vso", order="VSO"),
        _language("sov50", order="SOV", adposition="post", shared=0.5),
        _language("lowres", parallel_train=300, bitext_train=100),
    ],
}
"""The organism's data: the base, nine languages at graded distances from it (see `LanguageSpec`)."""


def default_spec(seed: int = 0) -> dict[str, Any]:
    """A copy of `DEFAULT_SPEC` with `seed`."""
    return {**copy.deepcopy(DEFAULT_SPEC), "seed": seed}


def _int(spec: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}{key} must be an integer >= {minimum}, got {value!r}")
    return value


def check_spec(spec: Mapping[str, Any]) -> None:
    """ValueError naming the first missing, unknown or ill-typed entry of `spec`."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a spec is a mapping, got {type(spec).__name__}")
    for keys, where, entry in [(SPEC_KEYS, "spec", spec)] + [
            (LANGUAGE_KEYS, f"spec languages[{i}]", e) for i, e in enumerate(spec.get("languages") or [])]:
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping, got {type(entry).__name__}")
        if missing := [k for k in keys if k not in entry]:
            raise ValueError(f"{where} lacks {missing}")
        if unknown := sorted(set(entry) - set(keys)):
            raise ValueError(f"{where} has unknown keys {unknown}")
    if not isinstance(spec["languages"], list) or not spec["languages"]:
        raise ValueError("spec languages must be a non-empty list")
    if not isinstance(spec["digits"], bool):
        raise ValueError(f"spec digits must be true or false, got {spec['digits']!r}")
    _int(spec, "seed", "spec ")
    _int(spec, "task_max_steps", "spec ", 1)
    _int(spec, "parallel_test", "spec ", 1)
    _int(spec, "task_test", "spec ", 1)
    for entry in spec["languages"]:
        for key in ("parallel_train", "task_train", "bitext_train"):
            _int(entry, key, f"spec language {entry['code']!r}: ")


def language_specs(spec: Mapping[str, Any]) -> list[LanguageSpec]:
    return [LanguageSpec(e["code"], e["order"], e["adposition"], e["adjective"], e["shared"])
            for e in spec["languages"]]


def build_from_spec(spec: Mapping[str, Any]) -> Corpus:
    """The corpus `spec` describes (checked first), deterministically."""
    check_spec(spec)
    languages = make_languages(spec["seed"], language_specs(spec), spec["digits"])
    entries = spec["languages"]
    sizes = CorpusSizes(parallel_train={e["code"]: e["parallel_train"] for e in entries},
                        parallel_test=spec["parallel_test"],
                        task_train={e["code"]: e["task_train"] for e in entries}, task_test=spec["task_test"],
                        bitext_train={e["code"]: e["bitext_train"] for e in entries})
    return build_corpus(spec["seed"], sizes, languages, spec["task_max_steps"])
