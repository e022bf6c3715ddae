"""Conversion: round trip through the orbax format, and every bad input gives a clear error and no output."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import moe
from moe.checkpoint_files import CheckpointError
from moe.families import UnsupportedConfigError
from tests.helpers.hf_reference import padded_batch, tiny_model
from tests.helpers.scripts import script

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
    assert moe.load_config(hf_dir) == (hf_dir, model_hf.config) and moe.load_config(out) == (out, model_cv.config)
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
    (None, _drop_expert, CheckpointError, ["experts_0/up", "layer 1, expert 3"]),
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
    for load in (moe.from_pretrained, moe.load_config):
        with pytest.raises(FileNotFoundError, match="config.json"):
            load(tmp_path)


def test_missing_path():
    for load in (moe.from_pretrained, moe.load_config):
        with pytest.raises(FileNotFoundError, match="no such model folder"):
            load("/nonexistent/model/folder")


def test_shard_listed_in_index_but_absent(tmp_path):
    tiny_model("mixtral").save_pretrained(tmp_path, max_shard_size="50KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        moe.from_pretrained(tmp_path)
    out = tmp_path.parent / "out_absent_shard"
    assert _convert(tmp_path, out).returncode != 0 and not out.exists()


def _script(*args):
    """convert.py in a subprocess: (exit code, stderr)."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "convert.py"), *map(str, args)],
                            capture_output=True, text=True)
    return result.returncode, result.stderr


def _killed_at(hook: str, *args):
    """convert.py in a subprocess that SIGKILLs itself at `hook`: "set-aside" (right after the old output folder
    is renamed aside, before the new one is renamed in) or "copy" (while the new folder is being written)."""
    code = f"""
import os, runpy, shutil, signal, sys
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if {hook!r} == "set-aside":
    real = os.rename
    def rename(src, dst):
        real(src, dst)
        if ".old-" in os.fspath(dst):
            die()
    os.rename = rename
else:
    shutil.copy2 = lambda *a, **k: die()
sys.argv = ["convert.py", *{[str(a) for a in args]!r}]
runpy.run_path({str(REPO / "scripts" / "convert.py")!r}, run_name="__main__")
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _logits(path):
    model, params = moe.from_pretrained(path)
    ids, mask = padded_batch(model.config.vocab_size)
    return np.asarray(model.apply({"params": params}, ids, mask).logits)


@pytest.mark.slow
def test_overwrite_killed_between_renames_loses_nothing(hf_dir, tmp_path):
    other = tmp_path / "other"
    tiny_model("olmoe", seed=1).save_pretrained(other)
    out = tmp_path / "out"
    assert _script(hf_dir, out)[0] == 0
    before = _logits(out)
    assert _killed_at("set-aside", other, out, "--overwrite") == -9
    assert not out.exists() and len(_hidden(tmp_path)) == 2  # the old folder set aside, the new one complete
    with pytest.raises(FileNotFoundError, match="no such model folder"):  # not a broken folder
        moe.from_pretrained(out)
    code, err = _script(other, out)  # without --overwrite: the set-aside folder is restored, so it exists
    assert code == 2 and "already exists" in err and _hidden(tmp_path) == []
    np.testing.assert_array_equal(_logits(out), before)
    assert _script(other, out, "--overwrite")[0] == 0 and _hidden(tmp_path) == []
    np.testing.assert_array_equal(_logits(out), _logits(other))


def test_killed_conversion_leaves_its_folder_only_until_the_next_run(hf_dir, tmp_path):
    out = tmp_path / "out"
    assert _killed_at("copy", hf_dir, out) == -9
    assert not out.exists() and len(_hidden(tmp_path)) == 1 and _hidden(tmp_path)[0].startswith(".out.tmp-")
    assert _script(hf_dir, out)[0] == 0 and _hidden(tmp_path) == []
    np.testing.assert_array_equal(_logits(out), _logits(hf_dir))


def test_outputs_that_would_lose_data_are_refused_in_one_line(hf_dir, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    stamps = {p.name: p.stat().st_mtime_ns for p in src.iterdir()}
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    cases = [((src, src, "--overwrite"), "is the source"),
             ((src, src / "converted", "--overwrite"), "lies inside the source"),
             ((src, tmp_path, "--overwrite"), "contains the source"),
             ((src, a_file, "--overwrite"), f"{a_file} is a file, not a folder"),
             ((src, a_file / "out"), f"cannot create {a_file / 'out'}"),
             ((tmp_path / "missing", tmp_path / "out"), "no such model folder")]
    for args, message in cases:  # in-process (the kill tests run the script as a process)
        with pytest.raises(SystemExit) as exit_info:
            script("convert")(list(map(str, args)))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert {p.name: p.stat().st_mtime_ns for p in src.iterdir()} == stamps and a_file.read_text() == "keep me"


def _rewrite_header(path, change):
    """Apply `change` to the JSON header of a safetensors file, keeping its tensor data."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size:])


NAME = "model.layers.0.self_attn.q_proj.weight"


def _relabel_int(header):
    header[NAME]["dtype"] = "I32"  # same size as F32: loads and runs unless refused


def _shrink_shape(header):
    header[NAME]["shape"] = [header[NAME]["shape"][0], header[NAME]["shape"][1] - 1]


@pytest.mark.parametrize("breakage, error, words", [
    (lambda d: _rewrite_header(d / "model.safetensors", _relabel_int), CheckpointError,
     [NAME, "int32, an integer type"]),
    (lambda d: _rewrite_header(d / "model.safetensors", _shrink_shape), CheckpointError,
     ["model.safetensors", NAME, "spans 16384 bytes", "needs 16128"]),
    (lambda d: (d / "config.json").write_text("[1, 2]"), CheckpointError, ["config.json", "expected a JSON object"]),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text()[:40]), CheckpointError,
     ["config.json", "invalid JSON", "truncated"]),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "hidden_size": "64"})),
     UnsupportedConfigError, ["config.json", "hidden_size = '64'", "without quotes"]),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "num_experts": [8]})),
     UnsupportedConfigError, ["config.json", "num_experts"]),
])
def test_malformed_files_are_named(hf_dir, tmp_path, breakage, error, words):
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    breakage(src)
    with pytest.raises(error) as info:
        moe.from_pretrained(src)
    for word in words:
        assert word in str(info.value)
    code, err = _script(src, tmp_path / "out")
    assert code == 2 and words[0] in err and "Traceback" not in err


def test_malformed_index_and_converted_config_are_named(tmp_path):
    sharded = tmp_path / "sharded"
    tiny_model("mixtral").save_pretrained(sharded, max_shard_size="50KB")
    index = sharded / "model.safetensors.index.json"
    text = index.read_text()
    index.write_text(text[:len(text) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: invalid JSON"):
        moe.from_pretrained(sharded)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="index.json: no 'weight_map' object"):
        moe.from_pretrained(sharded)

    converted = tmp_path / "converted"
    tiny_model("olmoe").save_pretrained(tmp_path / "hf")
    assert _script(tmp_path / "hf", converted)[0] == 0
    config = converted / "moe_config.json"
    full = config.read_text()
    config.write_text(full[:60])
    with pytest.raises(CheckpointError, match="moe_config.json: invalid JSON .*Convert the checkpoint again"):
        moe.from_pretrained(converted)
    config.write_text(json.dumps({k: v for k, v in json.loads(full).items() if k != "num_experts"}))
    with pytest.raises(CheckpointError, match=r"moe_config.json: ModelConfig fields \['num_experts'\] are missing"):
        moe.from_pretrained(converted)
    config.write_text(full)
    shutil.rmtree(converted / "params")
    with pytest.raises(CheckpointError, match="without its params/ folder"):
        moe.from_pretrained(converted)


def test_folder_in_an_older_parameter_layout_is_refused(tmp_path):
    """A folder converted before the experts were fused (stack_0/moe/gate, .../up) is named, not half-loaded."""
    hf = tiny_model("olmoe", num_hidden_layers=1)
    hf.save_pretrained(tmp_path / "hf")
    model, params = moe.from_pretrained(tmp_path / "hf")
    experts = params.pop("experts_0")
    gate, up = experts["gate_up"][..., 0, :], experts["gate_up"][..., 1, :]
    params["stack_0"]["moe"] |= {"gate": gate, "up": up, "down": experts["down"]}
    moe.save_converted(tmp_path / "old", model.config, params)
    with pytest.raises(CheckpointError, match=r"old: its parameters do not match this version's layout .*"
                                              r"experts_0/down .*convert the checkpoint again"):
        moe.from_pretrained(tmp_path / "old")
