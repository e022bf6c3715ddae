"""A tiny random OLMoE checkpoint with the real OLMoE tokenizer (vocabulary 50304), for evaluation tests."""
from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers.hf_reference import tiny_model

SIZES = dict(vocab_size=50304, hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
             num_key_value_heads=2)  # 4 MoE layers x 8 experts, top-2


def write_tiny_olmoe(folder: Path, shared_data: Path, seed: int = 0):
    """Save the HF model (returned) with ``tokenizer.json`` copied in, as a checkpoint folder."""
    hf = tiny_model("olmoe", seed=seed, **SIZES)
    hf.save_pretrained(folder)
    shutil.copy(shared_data / "tokenizers" / "olmoe" / "tokenizer.json", folder / "tokenizer.json")
    return hf


def tfds_dir(tmp_path_factory) -> Path:
    """One TFDS folder for the whole test session, so each data set is prepared once."""
    path = tmp_path_factory.getbasetemp() / "tfds_shared"
    path.mkdir(exist_ok=True)
    return path
