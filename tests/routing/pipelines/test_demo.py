"""The demo: every pipeline on an organism folder, one verdict per claim with its test, and refusals first."""
from __future__ import annotations

import json

import pytest

from routing.pipelines import demo, steer_eval
from routing.pipelines.demo import DemoSettings, run_demo
from tests.helpers.organism import tiny_spec, write_tiny_organism
from tests.helpers.scripts import script
from tests.helpers.tiny_olmoe import tfds_dir

SMALL = dict(limit=24, max_passages=6, expert_samples=16, finetune_steps=2, finetune_pairs=4, n_boot=200,
             batch_size=32, tau=None, top_n=2)


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    """A random organism with 3 MoE layers (the U-shape test needs an inner layer)."""
    return write_tiny_organism(tmp_path_factory.mktemp("demo") / "organism", tiny_spec(task_test=24), num_layers=3)


@pytest.mark.slow
def test_demo_runs_every_pipeline_and_states_each_claims_test(organism, tmp_path, tmp_path_factory, monkeypatch):
    def recomputed(*args, **kwargs):
        raise AssertionError("steer_eval computed its own baseline instead of reusing correlate's")

    monkeypatch.setattr(steer_eval, "run_baseline", recomputed)
    out, small = tmp_path / "report", {**SMALL, "tfds_dir": tfds_dir(tmp_path_factory)}
    summary = run_demo(out, DemoSettings(model=str(organism), **small), progress=False, log=lambda line: None)
    for path in ("routing/routing_table.json", "routing/divergence_by_layer.png", "correlation/correlation.json",
                 "experts/experts.json", "steering/soft_0.5/results.json", "steering/hard/results.json",
                 "steering/outside_window/results.json", "steering/random_experts/results.json",
                 "finetune/finetune.json", "finetune/finetune_divergence.png", "summary.md"):
        assert (out / path).stat().st_size > 0, path
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # built aside, swapped in whole
    claims = summary["claims"]
    assert {claims[k]["verdict"] for k in claims} <= {"shown", "not shown"}
    assert all(claims[k]["test"] for k in claims)
    assert summary["items_per_language"] == 24 and summary["languages"][0] == "base"
    assert set(summary["steering"]) == {"soft_0.25", "soft_0.5", "soft_1", "hard", "outside_window",
                                        "random_experts"}
    for effect in summary["steering"].values():
        assert (effect["items"], effect["cells"]) == (24, 24 * 4)  # problems are the units, not problem x language
        assert effect["difference_ci_low"] <= effect["difference"] <= effect["difference_ci_high"]
    window = summary["window"]
    assert window[0] >= 1 and window[1] <= 1  # inside the U test's middle (3 layers: layer 1)
    assert "| 1. U-shaped divergence |" in (out / "summary.md").read_text()
    assert demo.check_demo(out, DemoSettings(model=str(organism), **small))  # a report: a rerun may replace it


def test_demo_refuses_bad_settings_and_folders_before_any_work(organism, tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the demo started before the error")

    monkeypatch.setattr(demo, "_run", forbidden)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("not a report")
    (tmp_path / "file").write_text("")
    cases = [(["--out", str(tmp_path / "mine")], "holds files that are not a demo report"),
             (["--out", str(tmp_path / "file")], "is a file, not a folder"),
             (["--window", "0:9"], "0 <= FIRST <= LAST"),
             (["--model", str(tmp_path)], "no organism.json"),
             (["--limit", "0"], "limit must be >= 1")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            script("demo")(["--model", str(organism), "--out", str(tmp_path / "report"), *args])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error and "Traceback" not in error, args
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "not a report"
    with pytest.raises(ValueError, match="primary_lam"):
        DemoSettings(lams=(0.25,), primary_lam=0.5)


def test_seeds_table_reads_reports_and_refuses_other_folders(tmp_path, capsys):
    effect = {"difference": 0.02, "difference_ci_low": -0.01, "difference_ci_high": 0.05, "p": 0.2,
              "verdict": "no change shown"}
    summary = {"report": demo.REPORT, "languages": ["base", "x", "y"], "baseline_accuracy": {"base": 0.9, "x": 0.5,
                                                                                             "y": 0.3},
               "organism": {"training": {"seed": 7}}, "finetune": None,
               "claims": {"u_shape": {"verdict": "shown", "u_shaped": 2, "languages": 2},
                          "correlation": {"verdict": "not shown", "pearson_r": None, "pearson_ci": [None, None],
                                          "pearson_p": None},
                          "steering": {"verdict": "not shown", "effect": effect}}}
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    assert script("demo")(["--table", str(tmp_path / "r")]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| 7 | 90.0% | 40.0% | shown: 2/2 languages | not shown: r = n/a [n/a, n/a], p = n/a |")
    assert "| not shown (no change shown): +2.0 pts [-1.0, +5.0], p = 0.2 |" in row and row.endswith("| not run |")
    with pytest.raises(SystemExit):
        script("demo")(["--table", str(tmp_path)])
    assert "is not a demo report" in capsys.readouterr().err


def test_retrain_refuses_an_unrelated_folder_and_a_bad_window_before_training(tmp_path, capsys, monkeypatch):
    demo_script = script("demo")

    def forbidden(*args, **kwargs):
        raise AssertionError("training started before the error")

    monkeypatch.setitem(demo_script.__globals__, "train_organism", forbidden)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "weights.bin").write_text("precious")
    for args, message in [(["--model", str(tmp_path / "checkpoint")], "holds files but no organism.json"),
                          (["--model", str(tmp_path / "new"), "--window", "3:9"], "0 <= FIRST <= LAST")]:
        with pytest.raises(SystemExit):
            demo_script(["--retrain", "--out", str(tmp_path / "report"), *args])
        assert message in capsys.readouterr().err, args
    assert (tmp_path / "checkpoint" / "weights.bin").read_text() == "precious"
