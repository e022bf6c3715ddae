"""scripts/steer_eval.py end to end on a tiny model with real data (MGSM and BELEBELE, controls, the
correlation), the steered run applies its plan's edit, and bad inputs fail before any compute."""
import csv
import dataclasses
import json

import pytest

from routing import steering
from routing.eval.tasks import EvalSettings, run_task
from routing.pipelines import steer_eval
from routing.pipelines.steer_eval import SteeringPlan, run_baseline
from tests.helpers.progress import Bars
from tests.helpers.scripts import script
from tests.helpers.tiny_olmoe import tfds_dir

EVAL = ["--plain", "--limit", "2", "--max-length", "256", "--buckets", "256", "--batch-size", "4", "--n-boot", "200",
        "--max-passages", "2", "--max-new-tokens", "4"]


def test_steer_eval_mgsm_writes_every_output(model_env, experts, monkeypatch):
    folder, data, runs = model_env
    out, bars = runs / "mgsm", Bars()
    monkeypatch.setattr(steer_eval, "tqdm", bars)
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
    assert bars.finished() == {"baseline": (8, 8), "steered": (8, 8), "FLORES routing": (8, 8)}
    correlation = json.loads((out / "correlation.json").read_text())
    assert correlation["languages"] == ["fra_Latn", "deu_Latn", "zho_Hans"]
    for name in ("steer_eval.png", "correlation.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_steer_eval_belebele_control_and_divergence_table(model_env, experts, tmp_path, monkeypatch):
    folder, data, runs = model_env
    table = {"per_language": {"eng_Latn": {"divergence": None},
                              **{lang: {"divergence": [0.5, 0.1 * i, 0.2 * i, 0.9]}
                                 for i, lang in enumerate(("ind_Latn", "vie_Latn", "zsm_Latn"), 1)}}}
    (tmp_path / "routing_table.json").write_text(json.dumps(table))
    out, bars = runs / "belebele", Bars()
    monkeypatch.setattr(steer_eval, "tqdm", bars)
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
    assert bars.finished() == {"baseline": (4, 4), "steered": (4, 4)}  # items, not item x option rows


def test_steered_run_applies_its_plans_edit(model_env, experts, shared_data, tmp_path_factory):
    """Multiple choice scores show any change of routing: a plan forcing experts on changes them, and equals a
    direct evaluation under that edit bit for bit; an empty plan reproduces the baseline bit for bit."""
    folder, _, runs = model_env
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
    ([[1, 2]], ["--task", "poetry"], "invalid choice: 'poetry'"),
    ([[1, 2]], ["--mode", "sideways"], "invalid choice: 'sideways'"),
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
def test_bad_inputs_fail_before_any_compute(model_env, experts, tmp_path, no_compute, capsys, experts_json, extra, message):
    folder, data, _ = model_env
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


def test_tokenizer_beyond_the_model_vocabulary_fails_before_any_work(model_env, experts, small_vocab, tmp_path, capsys,
                                                                     no_compute):
    _, data, _ = model_env
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
