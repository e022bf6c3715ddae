"""scripts/benchmark.py's reports: spreads over repetitions, no verdict from too few, peak-memory probes."""
import json

import numpy as np
import pytest

from tests.helpers.scripts import script_module

benchmark = script_module("benchmark")


def report(scoring_seconds, forward_seconds):
    tokens = 1000
    spread = benchmark.rates
    scoring = {"tokens": tokens, "forward_tokens_per_s": spread(tokens, forward_seconds),
               "scoring_tokens_per_s": spread(tokens, scoring_seconds),
               "scoring_vs_forward": benchmark.ratio_spread(scoring_seconds, forward_seconds)}
    generation = {"new_tokens": 4, "jax_tokens_per_s": spread(32, scoring_seconds),
                  "hf_tokens_per_s": spread(32, forward_seconds),
                  "jax_vs_hf": benchmark.ratio_spread(scoring_seconds, forward_seconds), "same_tokens": 1.0}
    return {"batch": 8, "scoring_letter": scoring, "scoring_text": scoring, "generation": generation}


def test_spreads_are_medians_and_ranges_of_paired_repetitions():
    assert benchmark.rates(100, [1.0, 2.0, 4.0]) == {"median": 50.0, "min": 25.0, "max": 100.0, "reps": 3}
    ratio = benchmark.ratio_spread([1.0, 1.0, 2.0], [2.0, 1.0, 1.0])  # forward time / scoring time, per pair
    assert ratio == {"median": 1.0, "min": 0.5, "max": 2.0, "reps": 3}


@pytest.mark.parametrize("scoring, forward, verdict", [
    ([1.0], [1.0], "NO VERDICT"), ([1.0, 1.1], [1.0, 1.0], "NO VERDICT"),
    ([1.0, 1.1, 0.9], [1.0, 1.0, 1.0], "PASS"), ([2.0, 2.1, 1.9], [1.0, 1.0, 1.0], "FAIL"),
])
def test_a_verdict_needs_three_repetitions(scoring, forward, verdict):
    lines = benchmark.eval_lines(report(scoring, forward))
    verdicts = [line for line in lines if line.startswith(("PASS", "FAIL", "NO VERDICT"))]
    assert len(verdicts) == 2 and all(line.startswith(verdict) for line in verdicts)
    assert not any(line.startswith(("PASS", "FAIL")) for line in lines) or len(scoring) >= 3
    assert f"over {len(scoring)} repetitions" in lines[0]


def test_bad_counts_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--only", "eval", "--reps", "0"])
    assert exit_info.value.code == 2 and "--reps must be at least 1" in capsys.readouterr().err


def _result(reps: int) -> dict:
    return {"reps": reps, "forward_speedup": 2.5, "analysis_speedup": 2.0, "steering_overhead": 0.01,
            "peak_fraction": 0.75, "conversion": {"memory_ratio": 1.1}}


@pytest.mark.parametrize("reps", [1, 2])
def test_no_verdict_from_too_few_repetitions(reps):
    lines = benchmark.verdicts("olmoe", _result(reps))
    assert lines == [f"olmoe: PASS/FAIL not shown: {reps} repetition{'s' * (reps > 1)} (at least 3 needed)"]
    assert not any(word in line.split(":")[0] for line in lines for word in ("PASS", "FAIL"))


def test_verdicts_against_the_targets():
    lines = benchmark.verdicts("qwen3", _result(3))
    assert "PASS qwen3 forward_speedup: 2.50x >= 2.0x" in lines
    assert "FAIL qwen3 analysis_speedup: 2.00x >= 3.0x" in lines
    assert "PASS qwen3 peak_fraction: 75% >= 70%" in lines


def test_peak_rss_sees_an_allocation():
    base = benchmark.peak_memory(lambda: None, "cpu", "jax")["bytes"]
    grown = benchmark.peak_memory(lambda: np.ones(64 * 2**20 // 8).sum(), "cpu", "jax")["bytes"]  # 64 MiB, freed
    assert grown - base > 48 * 2**20
    assert benchmark.peak_memory(lambda: None, "cpu", "jax")["bytes"] - base < 16 * 2**20  # the peak was reset


def test_real_size_shape():
    spec = benchmark.CONFIGS["qwen3_30b"]
    assert (spec["hidden"], spec["experts"], spec["expert_size"], spec["top_k"], spec["heads"], spec["kv_heads"],
            spec["layers"]) == (2048, 128, 768, 8, 32, 4, 2)
    assert benchmark.hf_config(spec, 2).head_dim == 128


def test_the_evaluation_benchmark_runs_and_writes_its_report(tmp_path, capsys):
    """A tiny end-to-end run of ``--only eval``: JAX and HF give the same greedy tokens, and the JSON holds
    every figure the printed lines quote."""
    out = tmp_path / "bench.json"
    assert benchmark.main(["--only", "eval", "--reps", "1", "--eval-items", "2", "--eval-new-tokens", "3",
                           "--batch", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["eval"]["generation"]["same_tokens"] == 1.0
    for style in ("letter", "text"):
        assert report["eval"][f"scoring_{style}"]["scoring_vs_forward"]["reps"] == 1
    printed = capsys.readouterr().out
    assert "NO VERDICT scoring_vs_forward" in printed and "PASS" not in printed
    assert report["verdicts"] and all(line in printed.splitlines() for line in report["verdicts"])


def test_dispatch_sweep_times_the_paths_interleaved():
    order = []
    times = benchmark.paired_times({"dense": lambda: order.append("d"), "blocked": lambda: order.append("b")}, 3,
                                   min_seconds=0)
    assert "".join(order) == "db" + "db" + "bd" + "db"  # warm-ups, then each repetition in alternating order
    assert [len(t) for t in times.values()] == [3, 3]


def test_dispatch_sweep_lines_name_the_faster_path():
    shape = dict(tokens=64, experts=8, top_k=2, hidden=64, expert_size=64, training=True)
    timed_row = shape | {"dense": {"median": 0.001, "min": 0.001, "max": 0.002},
                         "blocked": {"median": 0.003, "min": 0.002, "max": 0.004},
                         "blocked_over_dense": benchmark.ratio_spread([0.001, 0.001], [0.003, 0.003])}
    assert benchmark.sweep_line(timed_row).endswith("blocked/dense 3.00x (3.00-3.00)  -> dense")
    stopped = shape | {"first_call": {"dense": 4.0}, "stopped": "stopped after 60 s"}
    assert benchmark.sweep_line(stopped).endswith("dense 4 s; stopped after 60 s  -> dense")
    assert "skipped (dense ~30 s" in benchmark.sweep_line(shape | {"skipped": "dense ~30 s, 4.2 GiB"})
    assert benchmark.dense_cost(64, 8, 64, 64, training=False) == (6.0 * 64 * 8 * 64 * 64, 4.0 * 8 * 64 * 256)
