"""scripts/benchmark.py's reporting: spreads over repetitions, no verdict from too few, peak-memory probes."""
import numpy as np
import pytest

from tests.helpers.scripts import script_module

bench = script_module("benchmark")


def _result(reps: int) -> dict:
    return {"reps": reps, "forward_speedup": 2.5, "analysis_speedup": 2.0, "steering_overhead": 0.01,
            "peak_fraction": 0.75, "conversion": {"memory_ratio": 1.1}}


def test_rates_give_median_and_range():
    assert bench.rates(100.0, [2.0, 1.0, 4.0]) == {"median": 50.0, "min": 25.0, "max": 100.0}


@pytest.mark.parametrize("reps", [1, 2])
def test_no_verdict_from_too_few_repetitions(reps):
    lines = bench.verdicts("olmoe", _result(reps))
    assert lines == [f"olmoe: PASS/FAIL not shown: {reps} repetition{'s' * (reps > 1)} (at least 3 needed)"]
    assert not any(word in line.split(":")[0] for line in lines for word in ("PASS", "FAIL"))


def test_verdicts_against_the_targets():
    lines = bench.verdicts("qwen3", _result(3))
    assert "PASS qwen3 forward_speedup: 2.50x >= 2.0x" in lines
    assert "FAIL qwen3 analysis_speedup: 2.00x >= 3.0x" in lines
    assert "PASS qwen3 peak_fraction: 75% >= 70%" in lines


def test_peak_rss_sees_an_allocation():
    base = bench.peak_memory(lambda: None, "cpu", "jax")["bytes"]
    grown = bench.peak_memory(lambda: np.ones(64 * 2**20 // 8).sum(), "cpu", "jax")["bytes"]  # 64 MiB, freed
    assert grown - base > 48 * 2**20
    assert bench.peak_memory(lambda: None, "cpu", "jax")["bytes"] - base < 16 * 2**20  # the peak was reset


def test_real_size_shape():
    spec = bench.CONFIGS["qwen3_30b"]
    assert (spec["hidden"], spec["experts"], spec["expert_size"], spec["top_k"], spec["heads"], spec["kv_heads"],
            spec["layers"]) == (2048, 128, 768, 8, 32, 4, 2)
    assert bench.hf_config(spec, 2).head_dim == 128
