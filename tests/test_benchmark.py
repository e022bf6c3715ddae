"""scripts/benchmark.py's evaluation report: spreads over repetitions, and no verdict from too few of them."""
import pytest

from tests.helpers.scripts import script_module

benchmark = script_module("benchmark")


def report(scoring_seconds, forward_seconds):
    tokens = 1000
    spread = benchmark.rate_spread
    scoring = {"tokens": tokens, "forward_tokens_per_s": spread(tokens, forward_seconds),
               "scoring_tokens_per_s": spread(tokens, scoring_seconds),
               "scoring_vs_forward": benchmark.ratio_spread(scoring_seconds, forward_seconds)}
    generation = {"new_tokens": 4, "jax_tokens_per_s": spread(32, scoring_seconds),
                  "hf_tokens_per_s": spread(32, forward_seconds),
                  "jax_vs_hf": benchmark.ratio_spread(scoring_seconds, forward_seconds), "same_tokens": 1.0}
    return {"batch": 8, "scoring_letter": scoring, "scoring_text": scoring, "generation": generation}


def test_spreads_are_medians_and_ranges_of_paired_repetitions():
    assert benchmark.rate_spread(100, [1.0, 2.0, 4.0]) == {"median": 50.0, "min": 25.0, "max": 100.0, "reps": 3}
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
