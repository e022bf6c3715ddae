"""The organism end to end: generate the corpus from its spec, train (resumably), measure the held-out metrics,
and write the shipped HF folder (config.json, model.safetensors, tokenizer files, organism.json) atomically
through `moe.export`."""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from moe.atomic import check_output_folder
from moe.export import save_hf
from routing.data.organism import FORMAT, ORGANISM_FILE
from routing.organism.hf_tokenizer import word_level_files
from routing.organism.synthetic import build_from_spec, build_tokenizer, check_spec
from routing.organism.train import TrainSettings, default_work_dir, divergence_from_base, task_accuracy, train

def train_organism(spec: Mapping[str, Any], settings: TrainSettings, out: str | Path, *,
                   work: str | Path | None = None, overwrite: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train on `build_from_spec(spec)` with `settings`, resuming from the checkpoints in `work` (default:
    `default_work_dir`), and write the organism folder `out` (replaced only with `overwrite`); returns the
    organism.json record. The spec and `out` are checked before any slow work; `work` is removed on success."""
    check_spec(spec)
    check_output_folder(out, may_exist=overwrite)
    work = Path(work) if work is not None else default_work_dir(spec, settings)
    corpus = build_from_spec(spec)
    tokenizer = build_tokenizer(corpus.languages)
    log(f"corpus: {len(corpus.languages)} languages, {tokenizer.vocab_size} tokens; checkpoints in {work}")
    model, params, _ = train(corpus, tokenizer, settings, work / "checkpoints", progress)
    accuracy = task_accuracy(model, params, corpus, tokenizer)
    divergence = divergence_from_base(model, params, corpus, tokenizer)
    codes = list(corpus.languages)
    record = {"format": FORMAT, "base": codes[0], "languages": codes, "data": dict(spec),
              "training": dataclasses.asdict(settings),
              "metrics": {"task_accuracy": accuracy, "divergence_from_base": divergence}}
    files = word_level_files(tokenizer.tokens)
    files[ORGANISM_FILE] = json.dumps(record, indent=2) + "\n"
    save_hf(out, model.config, params, extra_files=files, bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, overwrite=overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return record
