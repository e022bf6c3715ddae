"""Conversion: round trip through the orbax format, and every bad input gives a clear error and no output."""
import json
import subprocess
import sys

import numpy as np
import pytest
from hf_reference import padded_batch, tiny_model
from safetensors.numpy import load_file, save_file

import moe
from moe.checkpoint_files import CheckpointError
from moe.families import UnsupportedConfigError

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    tiny_model("olmoe").save_pretrained(path)
    return path


def _convert(src, out):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "convert.py"), str(src), str(out)],
                          capture_output=True, text=True)


def test_convert_script_round_trip(hf_dir, tmp_path):
    out = tmp_path / "converted"
    result = _convert(hf_dir, out)
    assert result.returncode == 0, result.stderr
    assert (out / "moe_config.json").is_file() and (out / "config.json").is_file()
    model_hf, params_hf = moe.from_pretrained(hf_dir)
    model_cv, params_cv = moe.from_pretrained(out)
    assert model_cv.config == model_hf.config
    ids, mask = padded_batch(model_hf.config.vocab_size)
    a = model_hf.apply({"params": params_hf}, ids, mask)
    b = model_cv.apply({"params": params_cv}, ids, mask)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    assert "already exists" in _convert(hf_dir, out).stderr


def _broken_copy(hf_dir, tmp_path, edit_config=None, edit_tensors=None):
    src = tmp_path / "broken"
    src.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (src / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(hf_dir / "model.safetensors"))
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(src / "model.safetensors"))
    return src


def _drop_expert(t):
    del t["model.layers.1.mlp.experts.3.up_proj.weight"]


def _add_tensor(t):
    t["model.layers.0.mlp.bonus.weight"] = np.zeros((2, 2), np.float32)


def _wrong_shape(t):
    t["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)


@pytest.mark.parametrize("edit_config, edit_tensors, error, words", [
    (lambda c: c.update(model_type="llama"), None, UnsupportedConfigError, ["model_type 'llama'", "olmoe"]),
    (lambda c: c.update(fancy_new_feature=True), None, UnsupportedConfigError, ["fancy_new_feature"]),
    (lambda c: c.update(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}), None,
     UnsupportedConfigError, ["rope", "dynamic"]),
    (lambda c: c.update(hidden_act="gelu"), None, UnsupportedConfigError, ["hidden_act", "gelu"]),
    (None, _drop_expert, CheckpointError, ["stack_0/moe/up", "layer 1, expert 3"]),
    (None, _add_tensor, CheckpointError, ["left over", "model.layers.0.mlp.bonus.weight"]),
    (None, _wrong_shape, CheckpointError, ["q_proj", "(3, 3)"]),
])
def test_bad_checkpoints_fail_clearly_and_write_nothing(hf_dir, tmp_path, edit_config, edit_tensors, error, words):
    src = _broken_copy(hf_dir, tmp_path, edit_config, edit_tensors)
    with pytest.raises(error) as info:
        moe.from_pretrained(src)
    for word in words:
        assert word in str(info.value)
    out = tmp_path / "out"
    result = _convert(src, out)
    assert result.returncode != 0 and words[0] in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_missing_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        moe.from_pretrained(tmp_path)


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        moe.from_pretrained("/nonexistent/model/folder")


def test_shard_listed_in_index_but_absent(tmp_path):
    tiny_model("mixtral").save_pretrained(tmp_path, max_shard_size="50KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        moe.from_pretrained(tmp_path)
    out = tmp_path.parent / "out_absent_shard"
    assert _convert(tmp_path, out).returncode != 0 and not out.exists()
