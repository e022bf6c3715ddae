"""Fixtures of the pipeline tests: a tiny OLMoE with the real tokenizer, the data arguments, and its experts."""
import json

import pytest

import routing.pipelines.find_experts
from tests.helpers.progress import Bars
from tests.helpers.scripts import script
from tests.helpers.tiny_olmoe import tfds_dir, write_tiny_olmoe

SEARCH = ["--plain", "--num-samples", "4", "--max-passages", "2", "--max-length", "256", "--batch-size", "4"]


@pytest.fixture(scope="package")
def model_env(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_steer")
    write_tiny_olmoe(folder, shared_data)
    data = ["--data-dir", str(shared_data), "--tfds-dir", str(tfds_dir(tmp_path_factory))]
    return folder, data, tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="package")
def expert_search(model_env):
    """The expert file of a find_experts run, and the progress bars it drew."""
    folder, data, runs = model_env
    out, bars = runs / "experts", Bars()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(routing.pipelines.find_experts, "tqdm", bars)
        assert script("find_experts")(["--model", str(folder), "--task", "mgsm", "--top-n", "3", "--window", "1:2",
                                       "--langs", "fr,de,zh", "--out", str(out), *data, *SEARCH]) == 0
    return out / "experts.json", bars


@pytest.fixture(scope="package")
def experts(expert_search):
    return expert_search[0]


@pytest.fixture
def small_vocab(model_env, tmp_path):
    """A model folder whose vocabulary (1000) is smaller than its tokenizer's, with no weights at all."""
    folder = tmp_path / "small_vocab"
    folder.mkdir()
    config = json.loads((model_env[0] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    (folder / "tokenizer.json").write_text((model_env[0] / "tokenizer.json").read_text())
    return folder
