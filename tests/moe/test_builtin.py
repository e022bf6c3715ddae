"""Built-in model names: "organism" is the package's folder, whatever the working directory holds."""
import tomllib
from pathlib import Path

import numpy as np
import pytest

import moe
from moe.builtin import Builtin
from moe.export import olmoe_config, save_hf
from routing.data.tokenize import load_tokenizer
from routing.organism.hf_tokenizer import word_level_files
from tests.moe.test_export import SIZES, random_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A tiny exported model (with a tokenizer) installed as the built-in organism; returns its params."""
    config = olmoe_config(**SIZES)
    params = random_params(config, seed=3)
    tokens = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(SIZES["vocab_size"] - 4)]
    save_hf(tmp_path / "package" / "organism", config, params, extra_files=word_level_files(tokens))
    monkeypatch.setitem(moe.BUILTIN_MODELS, "organism", Builtin(tmp_path / "package" / "organism", "reinstall"))
    return params


def test_organism_name_loads_the_builtin_folder(installed, tmp_path, monkeypatch):
    local = tmp_path / "cwd" / "organism"  # a local folder of the same name, holding another model
    other = olmoe_config(**{**SIZES, "num_layers": 3})
    save_hf(local, other, random_params(other))
    monkeypatch.chdir(tmp_path / "cwd")
    folder, config = moe.load_config("organism")
    assert folder == tmp_path / "package" / "organism" == moe.organism_path()
    assert config.num_layers == 2
    _, params = moe.from_pretrained("organism")
    np.testing.assert_array_equal(params["embed"], installed["embed"])
    assert load_tokenizer("organism").convert_ids_to_tokens(5) == "w1"
    for name in ("./organism", Path("organism"), str(local)):  # paths name the local folder
        assert moe.load_config(name)[1].num_layers == 3


def test_missing_organism_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(moe.BUILTIN_MODELS, "organism", 
                        Builtin(tmp_path / "organism", "run scripts/train_organism.py"))
    (tmp_path / "organism").mkdir()  # a folder without config.json is not installed either
    for load in (moe.from_pretrained, moe.load_config, load_tokenizer, lambda _: moe.organism_path()):
        with pytest.raises(FileNotFoundError, match="built-in organism is not installed .*run scripts/train_organism"):
            load("organism")


def test_builtin_folder_is_package_data():
    assert moe.BUILTIN_MODELS["organism"].folder == REPO / "moe" / "organism"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "organism/*" in pyproject["tool"]["setuptools"]["package-data"]["moe"]
