"""The organism shipped in moe/organism/: HF transformers and moe compute the same logits on it, its tokenizer
loads, it is small, and organism.json is well-formed. Skipped until the organism is installed."""
import json

import numpy as np
import pytest

import moe
from tests.helpers.hf_reference import hf_forward

FOLDER = moe.BUILTIN_MODELS["organism"].folder
pytestmark = pytest.mark.skipif(not (FOLDER / "config.json").is_file(),
                                reason=f"no organism installed ({FOLDER} has no config.json): "
                                       "run scripts/train_organism.py")
MAX_BYTES = 16 * 2**20


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(FOLDER)


def test_folder_is_small_and_complete():
    names = {p.name for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "organism.json"} <= names
    assert sum(p.stat().st_size for p in FOLDER.rglob("*") if p.is_file()) <= MAX_BYTES


def test_organism_json_is_well_formed():
    info = json.loads((FOLDER / "organism.json").read_text())
    assert info["format"] == "moe-routing organism/1"
    languages = info["languages"]
    assert isinstance(languages, list) and languages and len(set(languages)) == len(languages)
    assert all(isinstance(code, str) and code == code.lower() and " " not in code for code in languages)
    assert info["base"] == languages[0]
    for key in ("data", "training", "metrics"):
        assert isinstance(info[key], dict) and info[key], key
    assert isinstance(info["training"]["seed"], int)


def test_the_shipped_settings_are_the_scripts_defaults():
    """`scripts/train_organism.py` with its defaults trains the shipped organism's settings, dispatch included
    (paths round differently, so it decides the weights too)."""
    from routing.organism.train import TrainSettings
    info = json.loads((FOLDER / "organism.json").read_text())
    assert TrainSettings(**info["training"]) == TrainSettings()


def test_tokenizer_matches_the_model(tokenizer):
    config = moe.load_config("organism")[1]
    raw = json.loads((FOLDER / "config.json").read_text())
    assert len(tokenizer) <= config.vocab_size  # the model may pad its vocabulary
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        raw["bos_token_id"], raw["eos_token_id"], raw["pad_token_id"])
    assert tokenizer.chat_template is None
    words = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert tokenizer(" ".join(words[-3:]))["input_ids"] == [tokenizer.bos_token_id, *range(len(words) - 3,
                                                                                          len(words))]


def test_hf_transformers_gives_the_same_logits(tokenizer):
    from transformers import AutoModelForCausalLM
    model, params = moe.from_pretrained("organism")
    hf = AutoModelForCausalLM.from_pretrained(FOLDER, dtype="float32", attn_implementation="eager").eval()
    special = set(tokenizer.all_special_ids)
    words = [w for i, w in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))) if i not in special]
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(words, n)) for n in (12, 5, 9)]
    batch = tokenizer(prompts, padding=True, padding_side="left", return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    assert mask[1, :7].sum() == 0  # left-padded rows
    hf_logits, hf_router = hf_forward(hf, ids, mask)
    out = model.apply({"params": params}, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[real], hf_logits[real], rtol=0,
                               atol=1e-5 * np.abs(hf_logits[real]).max())
    np.testing.assert_allclose(np.asarray(out.router_logits)[:, real], hf_router[:, real], rtol=0,
                               atol=1e-5 * np.abs(hf_router[:, real]).max())
