"""scripts/correlate.py end to end on a tiny OLMoE with the real tokenizer, FLORES and BELEBELE: it reuses
analyze_routing's stored results, its numbers match analyze_routing's table and direct BELEBELE scoring, it
resumes, and bad inputs fail before any compute."""
import csv
import subprocess
import sys
import json

import numpy as np
import pytest

import moe
import routing.pipelines.analyze_routing
import routing.pipelines.correlate
import routing.pipelines.passages
from routing.eval.tasks import EvalSettings, load_task, run_task
from routing.pipelines.models import load_model, load_tokenizer_for
from tests.helpers.progress import Bars
from tests.helpers.scripts import SCRIPTS, script
from tests.helpers.tiny_olmoe import tfds_dir, write_tiny_olmoe

LANGS = "en,id,vi,ms,th"
ROUTING = ["--plain", "--max-passages", "2", "--max-length", "256", "--truncate", "keep_end", "--batch-size", "4"]


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def env(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_correlate")
    write_tiny_olmoe(folder, shared_data)
    root = tmp_path_factory.mktemp("correlate_runs")
    data = ["--data-dir", str(shared_data), "--tfds-dir", str(tfds_dir(tmp_path_factory))]
    assert script("analyze_routing")(["--model", str(folder), "--out", str(root / "routing"), "--langs",
                                      "eng_Latn,ind_Latn,vie_Latn,zsm_Latn,tha_Thai", "--no-progress",
                                      *data, *ROUTING]) == 0
    return folder, data, root


def run(env, out, *extra, bars: Bars | None = None):
    folder, data, root = env
    args = ["--model", str(folder), "--langs", LANGS, "--out", str(out), "--routing-dir", str(root / "routing"),
            "--window", "1:2", "--limit", "3", "--n-boot", "300", "--no-progress", *data, *ROUTING, *extra]
    analyses = Counter(routing.pipelines.passages.analyze_corpus)
    scorings = Counter(routing.pipelines.correlate.run_task)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(routing.pipelines.passages, "analyze_corpus", analyses)
        monkeypatch.setattr(routing.pipelines.correlate, "run_task", scorings)
        for module in (routing.pipelines.correlate, routing.pipelines.analyze_routing):
            monkeypatch.setattr(module, "tqdm", bars or Bars())
        code = script("correlate")(args)
    return code, analyses.calls, scorings.calls


def test_correlate_end_to_end(env, shared_data, capsys):
    folder, _, root = env
    out = root / "corr"
    bars = Bars()
    assert run(env, out, bars=bars) == (0, 0, 5)  # routing reused from analyze_routing, BELEBELE scored in 5 languages
    assert bars.finished() == {"FLORES routing": (10, 10), "BELEBELE": (15, 15)}  # reused languages count too
    record = json.loads((out / "correlation.json").read_text())
    assert record["languages"] == ["ind_Latn", "vie_Latn", "zsm_Latn", "tha_Thai"] and record["n"] == 4
    assert record["window"]["moe_layers"] == [1, 2] and record["reference"] == "eng_Latn"

    table = json.loads((root / "routing" / "routing_table.json").read_text())["per_language"]
    for lang in record["languages"]:  # the divergence analyze_routing reported, averaged over the window
        assert record["divergence"][lang] == pytest.approx(np.mean(table[lang]["divergence"][1:3]), rel=1e-6)

    loaded = load_model(folder, load_tokenizer_for(folder, None, moe.load_config(folder)[1]))
    settings = EvalSettings(limit=3, max_length=256, truncation="keep_end", batch_size=4)
    tha = load_task("belebele", ["tha_Thai"], settings, source_dir=shared_data)
    direct = run_task(loaded.model, loaded.params, loaded.tokenizer, tha, settings)
    assert record["accuracy"]["tha_Thai"] == np.mean([item.correct for item in direct])

    x = [record["divergence"][lang] for lang in record["languages"]]
    y = [record["accuracy"][lang] for lang in record["languages"]]
    assert np.ptp(y) > 0 and record["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert record["pearson_ci"][0] <= record["pearson_ci"][1] and 0 <= record["pearson_p"] <= 1
    rows = list(csv.DictReader((out / "correlation.csv").open()))
    assert [row["language"] for row in rows] == ["eng_Latn", "ind_Latn", "vie_Latn", "zsm_Latn", "tha_Thai"]
    assert [row["belebele_code"] for row in rows] == ["en", "id", "vi", "ms", "th"]
    assert rows[0]["in_correlation"] == "False" and rows[0]["middle_divergence"] == ""
    assert {row["items"] for row in rows} == {"3"}
    curves = list(csv.DictReader((out / "divergence_by_layer.csv").open()))
    assert len(curves) == 4 * 4  # 4 languages x 4 MoE layers
    assert (out / "correlation.png").read_bytes().startswith(b"\x89PNG")
    assert "Pearson r =" in capsys.readouterr().out

    # a second run resumes: nothing is recomputed, the same record comes out
    assert run(env, out) == (0, 0, 0)
    assert json.loads((out / "correlation.json").read_text()) == record


def test_stale_belebele_results_are_refused_before_loading(env, capsys, monkeypatch):
    _, _, root = env
    out = root / "stale"
    assert run(env, out, "--limit", "1")[0] == 0

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(routing.pipelines.analyze_routing, "prepare", forbidden)
    with pytest.raises(SystemExit) as exit_info:
        run(env, out, "--limit", "2")
    assert exit_info.value.code == 2 and "scored with other settings" in capsys.readouterr().err


@pytest.mark.parametrize("langs, message", [
    ("en,id,xx_Yyyy", "unknown FLORES-200 language code"),
    ("en,id,vi,fr", "no BELEBELE data for ['fra_Latn']"),
    ("en,id,vi", ">= 3 languages besides the reference"),
])
def test_bad_languages_fail_first(env, tmp_path, capsys, langs, message):
    folder, data, _ = env
    with pytest.raises(SystemExit) as exit_info:
        script("correlate")(["--model", str(folder), "--langs", langs, "--out", str(tmp_path / "out"), *data])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_names_the_outputs():
    result = subprocess.run([sys.executable, str(SCRIPTS / "correlate.py"), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "correlation.{json,csv}" in result.stdout and "--routing-dir" in result.stdout
