"""The organism end to end (a tiny run): the exported folder loads back as the trained model with the training
tokenizer, organism.json records spec, settings and metrics; and the script's refusals."""
import dataclasses
import json

import numpy as np
import pytest

import moe
from routing.organism.release import FORMAT, train_organism
from routing.organism.synthetic import build_from_spec, build_tokenizer
from routing.organism.train import divergence_from_base, task_accuracy
from tests.helpers.scripts import script
from tests.routing.organism.test_train import TINY, tiny_spec


@pytest.mark.slow  # 85 s measured while a training run shared the 2 cores (train, evaluate twice, export)
def test_exported_folder_is_the_trained_organism(tmp_path):
    from transformers import AutoTokenizer
    spec, out, work = tiny_spec(), tmp_path / "organism", tmp_path / "work"
    record = train_organism(spec, TINY, out, work=work, progress=False, log=lambda _: None)
    assert not work.exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "organism.json",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((out / "organism.json").read_text()) == record
    corpus = build_from_spec(spec)
    tokenizer = build_tokenizer(corpus.languages)
    assert record["format"] == FORMAT and record["languages"] == list(corpus.languages)
    assert record["base"] == "base" and record["data"] == spec and record["training"] == dataclasses.asdict(TINY)

    model, params = moe.from_pretrained(out)
    assert model.config == TINY.model_config(tokenizer.vocab_size)
    accuracy = task_accuracy(model, params, corpus, tokenizer)
    assert record["metrics"]["task_accuracy"] == accuracy
    assert all(a["n"] == spec["task_test"] for a in accuracy.values())
    divergence = record["metrics"]["divergence_from_base"]
    again = divergence_from_base(model, params, corpus, tokenizer)
    assert sorted(divergence) == sorted(again) == sorted(set(corpus.languages) - {"base"})
    for code, curve in divergence.items():
        np.testing.assert_allclose(curve, again[code], atol=1e-6)
    assert all(len(curve) == TINY.num_layers for curve in divergence.values())

    hf = AutoTokenizer.from_pretrained(out)
    text = corpus.task_test["vso"][0].text
    assert hf(text)["input_ids"] == tokenizer.encode(text, bos=True)

    with pytest.raises(FileExistsError):
        train_organism(spec, TINY, out, work=work, progress=False)
    assert not work.exists()  # refused before any work


def refusal(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        script("train_organism")(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err and ": error: " in err.splitlines()[-1], err
    return err.splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "steps must be >= 1"),
    (["--steps", "ten"], "not an integer: 'ten'"),
    (["--seed", "-1"], "must be >= 0, got -1"),
    (["--colour", "red"], "unrecognized arguments"),
    (["--dispatch", "fast"], "invalid choice: 'fast'"),
])
def test_script_refuses_bad_flags(argv, message, capsys, tmp_path):
    assert message in refusal([*argv, "--out", str(tmp_path / "o")], capsys)


def test_script_refuses_an_existing_output_before_training(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in refusal(["--out", str(tmp_path / "file"), "--work", str(tmp_path / "w")],
                                                capsys)
    (tmp_path / "folder").mkdir()
    assert "folder" in refusal(["--out", str(tmp_path / "folder"), "--work", str(tmp_path / "w")], capsys)
    assert not (tmp_path / "w").exists()
