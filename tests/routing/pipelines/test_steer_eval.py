"""find_experts -> steer_eval -> reproduce end to end on a tiny model with real data; bad inputs fail first."""
import csv
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from routing import steering
from routing.eval.tasks import EvalSettings, run_task
from routing.pipelines import find_experts, steer_eval
from routing.pipelines.experts_file import ExpertSets
from routing.pipelines.reproduce import load_recipe
from routing.pipelines.steer_eval import SteeringPlan, run_baseline
from tests.helpers.tiny_olmoe import tfds_dir, write_tiny_olmoe

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
SEARCH = ["--plain", "--num-samples", "4", "--max-passages", "2", "--max-length", "256", "--batch-size", "4"]
EVAL = ["--plain", "--limit", "2", "--max-length", "256", "--buckets", "256", "--batch-size", "4", "--n-boot", "200",
        "--max-passages", "2", "--max-new-tokens", "4"]


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def env(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_steer")
    write_tiny_olmoe(folder, shared_data)
    data = ["--data-dir", str(shared_data), "--tfds-dir", str(tfds_dir(tmp_path_factory))]
    return folder, data, tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def experts(env):
    folder, data, runs = env
    out = runs / "experts"
    assert script("find_experts")(["--model", str(folder), "--task", "mgsm", "--top-n", "3", "--window", "1:2",
                                   "--langs", "fr,de,zh", "--out", str(out), *data, *SEARCH]) == 0
    return out / "experts.json"


def test_find_experts_writes_sets_tables_and_plots(experts):
    sets = ExpertSets.from_json(json.loads(experts.read_text()))
    assert len(sets.task_experts) == 3 and all(1 <= layer <= 2 for layer, _ in sets.task_experts)
    assert sets.delta_task.shape == (4, 8) and set(sets.delta_languages) == {"fra_Latn", "deu_Latn", "zho_Hans"}
    assert sets.sequences == {"task": 4, "flores_eng_Latn": 2, "flores_fra_Latn": 2, "flores_deu_Latn": 2,
                              "flores_zho_Hans": 2}
    assert all(len(p) == 3 for p in sets.language_experts.values())
    for name in ("delta_task.png", "delta_fra_Latn.png"):
        assert (experts.parent / name).read_bytes().startswith(b"\x89PNG")


def test_steer_eval_mgsm_writes_every_output(env, experts):
    folder, data, runs = env
    out = runs / "mgsm"
    assert script("steer_eval")(["--model", str(folder), "--task", "mgsm", "--experts", str(experts),
                                 "--langs", "en,fr,de,zh", "--out", str(out), *data, *EVAL,
                                 "--chat-date", "2024-05-06", "--stop", "Question:", "--instruction", "Be brief."]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [row["language"] for row in rows] == ["eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans", "all"]
    table = json.loads((out / "results.json").read_text())["table"]
    assert all(0 <= row["mcnemar_p"] <= 1 and row["difference_ci_low"] <= row["difference"] <= row["difference_ci_high"]
               for row in table)
    items = [json.loads(line) for line in (out / "items.jsonl").open()]
    assert len(items) == 8 and all(isinstance(i["baseline"]["detail"], str) for i in items)
    assert all(row["base_unanswered"] == row["steer_unanswered"] == 0 for row in table)
    config = json.loads((out / "config.json").read_text())
    assert config["steering"]["window"] == [1, 2] and config["steering"]["mode"] == "soft"
    protocol = {key: config["config"]["eval"][key] for key in ("template", "instruction", "stop", "answer_format",
                                                               "chat_date", "reasoning_effort")}
    assert protocol == {"template": "Question: {question}\nAnswer:", "instruction": "Be brief.", "stop": ["Question:"],
                        "answer_format": "plain", "chat_date": "2024-05-06", "reasoning_effort": None}
    assert config["steered_experts"]["fra_Latn"]["experts"] == json.loads(experts.read_text())["task_experts"]
    assert config["items_per_language"] == {"eng_Latn": 2, "fra_Latn": 2, "deu_Latn": 2, "zho_Hans": 2}
    correlation = json.loads((out / "correlation.json").read_text())
    assert correlation["languages"] == ["fra_Latn", "deu_Latn", "zho_Hans"]
    for name in ("steer_eval.png", "correlation.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_steer_eval_belebele_control_and_divergence_table(env, experts, tmp_path):
    folder, data, runs = env
    table = {"per_language": {"eng_Latn": {"divergence": None},
                              **{lang: {"divergence": [0.5, 0.1 * i, 0.2 * i, 0.9]}
                                 for i, lang in enumerate(("ind_Latn", "vie_Latn", "zsm_Latn"), 1)}}}
    (tmp_path / "routing_table.json").write_text(json.dumps(table))
    out = runs / "belebele"
    assert script("steer_eval")(["--model", str(folder), "--task", "belebele", "--experts", str(experts),
                                 "--langs", "en,id,vi,ms", "--mode", "hard", "--eps", "0", "--eps-std", "1e-6",
                                 "--control", "random", "--out", str(out),
                                 "--divergence", str(tmp_path / "routing_table.json"), *data, *EVAL,
                                 "--truncate", "keep_end", "--limit", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["steering"]["eps"], config["steering"]["eps_std"]) == (0.0, 1e-6)
    steered = {tuple(p) for p in config["steered_experts"]["ind_Latn"]["experts"]}
    task = {tuple(p) for p in json.loads(experts.read_text())["task_experts"]}
    assert len(steered) == 3 and not steered & task and {l for l, _ in steered} == {l for l, _ in task}
    correlation = json.loads((out / "correlation.json").read_text())
    assert correlation["divergence"] == pytest.approx({"ind_Latn": 0.15, "vie_Latn": 0.3, "zsm_Latn": 0.45})
    assert correlation["divergence_source"].endswith("routing_table.json")
    assert all(isinstance(i["baseline"]["detail"], list) for i in map(json.loads, (out / "items.jsonl").open()))


def test_steered_run_applies_its_plans_edit(env, experts, shared_data, tmp_path_factory):
    """Multiple choice scores show any change of routing: a plan forcing experts on changes them, and equals a
    direct evaluation under that edit bit for bit; an empty plan reproduces the baseline bit for bit."""
    folder, _, runs = env
    settings = EvalSettings(limit=2, max_length=256, buckets=(256,), batch_size=4, truncation="keep_end")
    config = steer_eval.SteerEvalConfig(
        model=str(folder), task="belebele", experts=experts, out_dir=runs / "plans", languages=("en", "id"),
        window="1:2", eval=settings, source_dir=shared_data, tfds_dir=tfds_dir(tmp_path_factory), n_boot=100,
        correlation=False, progress=False)
    prepared = steer_eval.prepare(config)
    loaded, data = prepared.loaded, prepared.data
    baseline = run_baseline(loaded, data, settings)

    def steered(edit):
        plans = {lang: SteeringPlan([(1, 0)], [1, 2], edit) for lang in data.languages}
        return steer_eval.execute(dataclasses.replace(prepared, plans=plans), baseline=baseline)["steered"]

    forced = steering.force_on(loaded.config, [(layer, expert) for layer in range(4) for expert in (0, 1)])
    with_edit = steered(forced)
    assert any(s.detail != b.detail for s, b in zip(with_edit, baseline))
    direct = run_task(loaded.model, loaded.params, loaded.tokenizer, data, settings, edit=forced,
                      eos_ids=loaded.eos_ids)
    assert [s.detail for s in with_edit] == [d.detail for d in direct]
    assert [s.detail for s in steered(steering.empty(loaded.model))] == [b.detail for b in baseline]


def test_reproduce_runs_a_recipe_like_config_end_to_end(env, tmp_path):
    folder, data, runs = env
    recipe = json.loads((SCRIPTS / "recipes" / "qwen3_mgsm.json").read_text())
    recipe.update(name="tiny-mgsm", model=str(folder), window="1:2", expert_selection={"top_n": 2},
                  languages=["en", "fr"], chat=False, dtype="float32",
                  expert_search={"num_samples": 2, "max_passages": 2, "max_length": 256, "batch_size": 4},
                  eval={"limit": 1, "max_new_tokens": 4, "max_length": 256, "buckets": [256], "batch_size": 4})
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(recipe))
    out = runs / "reproduce"
    assert script("reproduce")([str(path), "--out", str(out), *data]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experts_found"] == 2 and summary["paper"]["steered"] == 78.0
    assert set(summary["controls"]) == {"outside-window", "language-experts", "random"}
    assert summary["controls"]["language-experts"]["n"] == 1  # English has no language experts
    for sub in ("steered", "control-outside-window", "control-language-experts", "control-random"):
        assert (out / sub / "results.json").is_file() and (out / sub / "config.json").is_file()
    outside = json.loads((out / "control-outside-window" / "config.json").read_text())
    assert outside["steered_experts"]["eng_Latn"]["layers"] == [0, 3]


def test_every_recipe_loads():
    recipes = sorted((SCRIPTS / "recipes").glob("*.json"))
    assert len(recipes) == 6
    rows = {(r.paper["model"], r.paper["task"]): r for r in map(load_recipe, recipes)}
    assert rows[("GPT-OSS", "MGSM")].mode == "hard" and rows[("GPT-OSS", "MGSM")].expert_selection == {"tau": 0.3}
    assert rows[("Qwen3", "MGSM")].window == "7:34"


@pytest.fixture
def no_compute(monkeypatch):
    """Loading weights or reading task data fails the test: errors must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("compute started before the error")

    monkeypatch.setattr(steer_eval, "load_model", forbidden)
    monkeypatch.setattr(steer_eval, "load_task", forbidden)


@pytest.mark.parametrize("experts_json, extra, message", [
    ([[1, 99]], [], "expert 99 out of range"),
    ([[7, 0]], [], "layer 7 out of range"),
    ([], [], "expert set is empty"),
    ([[1, 2]], ["--window", "2:9"], "0 <= FIRST <= LAST < 4"),
    ([[1, 2]], ["--task", "poetry"], "unknown task 'poetry'"),
    ([[1, 2]], ["--mode", "sideways"], "unknown mode"),
    ([[1, 2]], ["--control", "outside-window"], "needs Delta tables"),
    ([[3, 2]], [], "no selected expert lies in layers"),
    (None, ["--control", "language-experts", "--langs", "en,fr"], "no language experts for eng_Latn"),
    ([[1, 2]], ["--lam", "1e39"], "lam must be finite in float32"),
    ([[1, 2]], ["--lam", "nan"], "lam must be finite in float32"),
    ([[1, 2]], ["--mode", "hard", "--lam", "0.5"], "mode 'hard' takes none"),
    ("truncated", [], "experts.json: not a JSON file"),
    ("no_delta", [], "experts.json: not an experts.json of find_experts: missing key(s) delta_task"),
    ("folder", [], "experts.json: not a JSON file"),
    ([[1, 2]], ["--out", "FILE"], "is a file, not a folder"),
])
def test_bad_inputs_fail_before_any_compute(env, experts, tmp_path, no_compute, capsys, experts_json, extra, message):
    folder, data, _ = env
    path = experts
    if experts_json is not None:
        path = tmp_path / "experts.json"
        if experts_json == "truncated":
            path.write_text(experts.read_text()[:100])
        elif experts_json == "no_delta":
            path.write_text(json.dumps({k: v for k, v in json.loads(experts.read_text()).items() if k != "delta_task"}))
        elif experts_json == "folder":
            path.mkdir()
        else:
            path.write_text(json.dumps(experts_json))
    (tmp_path / "file").write_text("")
    extra = [str(tmp_path / "file") if arg == "FILE" else arg for arg in extra]
    args = ["--model", str(folder), "--task", "mgsm", "--experts", str(path), "--window", "1:2", "--langs", "fr",
            "--out", str(tmp_path / "out"), *data, "--plain"]
    with pytest.raises(SystemExit) as exit_info:
        script("steer_eval")(args + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--window", "0:4"], "0 <= FIRST <= LAST < 4"),
    (["--window", "1:2", "--top-n", "17"], "top_n must be in [1, 16]"),
    (["--window", "1:2", "--langs", "en"], "drop it from the languages"),
    (["--window", "1:2", "--langs", "xx_Yyyy"], "unknown FLORES-200 language code"),
])
def test_find_experts_bad_inputs(env, tmp_path, capsys, extra, message):
    folder, data, _ = env
    args = ["--model", str(folder), "--task", "mgsm", "--out", str(tmp_path / "out"), *data]
    if "--top-n" not in extra:
        args += ["--tau", "0.3"]
    with pytest.raises(SystemExit) as exit_info:
        script("find_experts")(args + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def small_vocab(env, tmp_path):
    """A model folder whose vocabulary (1000) is smaller than its tokenizer's, with no weights at all."""
    folder = tmp_path / "small_vocab"
    folder.mkdir()
    config = json.loads((env[0] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    (folder / "tokenizer.json").write_text((env[0] / "tokenizer.json").read_text())
    return folder


def test_tokenizer_beyond_the_model_vocabulary_fails_before_any_work(env, experts, small_vocab, tmp_path, capsys,
                                                                     no_compute):
    _, data, _ = env
    message = "has token ids up to 50279, but the model's vocabulary holds 1000"
    with pytest.raises(SystemExit) as exit_info:
        script("steer_eval")(["--model", str(small_vocab), "--task", "mgsm", "--experts", str(experts), "--langs",
                              "fr", "--out", str(tmp_path / "out"), *data, "--plain"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        script("find_experts")(["--model", str(small_vocab), "--task", "mgsm", "--tau", "0.3", "--window", "1:2",
                                "--out", str(tmp_path / "out"), *data])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_offline_without_data_folder_or_cached_model_fails_in_one_line(env, tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("weights loaded before the error")

    monkeypatch.setattr(find_experts, "load_model", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder, _, _ = env
    args = ["--task", "mgsm", "--tau", "0.3", "--window", "1:2", "--out", str(tmp_path / "out"),
            "--tfds-dir", str(tmp_path / "tfds"), "--plain"]
    with pytest.raises(SystemExit) as exit_info:
        script("find_experts")(["--model", str(folder), *args])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error and ": error: " in error.splitlines()[-1]
    assert "gsm8k_math: cannot download its source (HF_HUB_OFFLINE is set)" in error and "--data-dir" in error
    with pytest.raises(SystemExit) as exit_info:
        script("find_experts")(["--model", "some-org/not-cached-model", *args])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not in the local HF hub cache" in error
    assert "`hf download some-org/not-cached-model`" in error
