"""Runs that are refused (a tokenizer without a chat template, stored results of another run, a hub id while
offline) are refused before any data is prepared or any weights are loaded, as one line naming the fix."""
import json
import os
import subprocess
import sys

import pytest

import moe
from routing.data.source import SourceBuilder
from tests.helpers.scripts import SCRIPTS, script


@pytest.fixture
def no_work(monkeypatch):
    """Preparing data or loading weights fails the test: a refusal must come first."""
    def work(*args, **kwargs):
        raise AssertionError("data was prepared or weights were loaded before the refusal")

    monkeypatch.setattr(SourceBuilder, "download_and_prepare", work)
    monkeypatch.setattr(moe, "from_pretrained", work)


def refusal(name, argv, capsys, one_line=True) -> str:
    """The error of ``scripts/{name}.py argv`` (exit status 2; one line unless it lists several files)."""
    with pytest.raises(SystemExit) as exit:
        script(name)(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and ": error: " in err.splitlines()[0] and "Traceback" not in err, err
    assert err.count("\n") == 1 or not one_line, err
    return err


def _steer_argv(folder, data, out, experts):
    return ["--model", str(folder), "--task", "mgsm", "--experts", str(experts), "--window", "1:2", "--langs", "en,fr",
            "--out", str(out), *data]


def _recipe(tmp_path, folder, chat):
    recipe = json.loads((SCRIPTS / "recipes" / "qwen3_mgsm.json").read_text())
    recipe.update(model=str(folder), window="1:2", languages=["en", "fr"], chat=chat, dtype="float32")
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


@pytest.mark.parametrize("name", ["analyze_routing", "correlate", "find_experts", "steer_eval", "reproduce"])
def test_a_tokenizer_without_chat_template_names_both_fixes_before_any_work(name, model_env, tmp_path, no_work,
                                                                            capsys):
    folder, data, _ = model_env  # the tiny model's tokenizer.json has no chat template; --chat is the default
    out = tmp_path / "out"
    experts = tmp_path / "experts.json"
    experts.write_text("[[1, 0]]")
    argv = {
        "analyze_routing": ["--model", str(folder), "--langs", "fra_Latn", "--out", str(out), *data],
        "correlate": ["--model", str(folder), "--langs", "id,th,zh-s", "--out", str(out), *data],
        "find_experts": ["--model", str(folder), "--task", "mgsm", "--top-n", "2", "--window", "1:2", "--out",
                         str(out), "--no-progress", *data],  # its bar opens before the checks
        "steer_eval": _steer_argv(folder, data, out, experts),
        "reproduce": [str(_recipe(tmp_path, folder, chat=True)), "--out", str(out), *data],
    }[name]
    err = refusal(name, argv, capsys)
    assert "no chat template" in err and "--chat-template FILE" in err and "--plain" in err


@pytest.mark.parametrize("name", ["analyze_routing", "correlate"])
def test_stored_results_of_another_run_are_refused_before_any_work(name, model_env, tmp_path, no_work, capsys):
    folder, data, _ = model_env
    stored = tmp_path / "out" / "languages" / "eng_Latn.npz"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"not an npz file")  # left by an interrupted run of another version
    langs = "fra_Latn" if name == "analyze_routing" else "id,th,zh-s"
    err = refusal(name, ["--model", str(folder), "--langs", langs, "--out", str(tmp_path / "out"), "--plain",
                         *data], capsys, one_line=False)
    assert f"{stored} cannot be read" in err and "--restart" in err


def test_analyze_routing_refuses_results_computed_under_other_settings_before_preparing_data(
        model_env, tmp_path, monkeypatch, capsys):
    folder, data, _ = model_env
    out = tmp_path / "out"
    argv = ["--model", str(folder), "--langs", "fra_Latn", "--out", str(out), "--plain", "--max-passages", "1",
            "--max-length", "512", "--no-progress", *data]
    assert script("analyze_routing")(argv) == 0
    capsys.readouterr()
    monkeypatch.setattr(SourceBuilder, "download_and_prepare", lambda self: pytest.fail("data was prepared"))
    err = refusal("analyze_routing", [*argv, "--max-length", "1024"], capsys, one_line=False)
    assert "max_length: 512 -> 1024" in err and "--restart" in err


def test_steer_eval_checks_the_correlations_flores_files_before_any_work(model_env, tmp_path, no_work, capsys):
    folder, _, _ = model_env
    source = tmp_path / "data"
    (source / "flores200" / "devtest").mkdir(parents=True)
    (source / "flores200" / "devtest" / "fra_Latn.devtest").write_text("")
    experts = tmp_path / "experts.json"
    experts.write_text("[[1, 0]]")
    argv = ["--model", str(folder), "--task", "mgsm", "--experts", str(experts), "--window", "1:2",
            "--langs", "en,fr,de,zh", "--out", str(tmp_path / "out"), "--plain", "--data-dir", str(source)]
    err = refusal("steer_eval", argv, capsys)
    assert "eng_Latn" in err and "deu_Latn" in err and "zho_Hans" in err


def test_a_hub_id_while_offline_is_one_line_saying_how_to_fetch_it(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, str(SCRIPTS / "convert.py"), "someorg/not-cached", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert "someorg/not-cached" in run.stderr and "not in the local HF hub cache" in run.stderr
    assert "hf download someorg/not-cached" in run.stderr
