"""Per-item evaluation results, per-language accuracy, and paired baseline-vs-steered comparison tables."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from routing.scoring import mcnemar_test, paired_bootstrap_ci, wilson_interval

ALL = "all"  # the row of a table that pools every language


@dataclasses.dataclass(frozen=True)
class ItemResult:
    """The outcome of one evaluated item.

    ``prediction``/``gold``: option index (multiple choice) or number (MGSM; ``None`` when nothing was
    extracted). ``detail``: the option log-likelihoods, or the generated text. ``answered``: False when the
    output never reached the part that is scored (e.g. GPT-OSS's final channel; such items are wrong).
    """

    language: str
    id: int
    correct: bool
    prediction: Any
    gold: Any
    detail: Any = None
    answered: bool = True

    @property
    def key(self) -> tuple[str, int]:
        return self.language, self.id


def _by_language(results: Sequence[ItemResult]) -> dict[str, list[ItemResult]]:
    grouped: dict[str, list[ItemResult]] = {}
    for result in results:
        grouped.setdefault(result.language, []).append(result)
    return grouped


def accuracy_table(results: Sequence[ItemResult], conf: float = 0.95) -> list[dict[str, Any]]:
    """One row per language (in first-seen order) and a pooled ``"all"`` row: n, correct, accuracy, Wilson CI,
    and ``unanswered`` (items whose output never reached the scored part, see ``ItemResult.answered``)."""
    if not results:
        raise ValueError("no results to summarise")
    groups = {**_by_language(results), ALL: list(results)}
    rows = []
    for language, items in groups.items():
        k = sum(item.correct for item in items)
        ci = wilson_interval(k, len(items), conf)
        rows.append({"language": language, "n": len(items), "correct": k, "accuracy": ci.estimate,
                     "ci_low": ci.low, "ci_high": ci.high, "unanswered": sum(not item.answered for item in items)})
    return rows


def paired_table(base: Sequence[ItemResult], steer: Sequence[ItemResult], *, n_boot: int = 10_000,
                 seed: int = 0, conf: float = 0.95) -> list[dict[str, Any]]:
    """Baseline vs steered on the same items, per language and pooled (``"all"``).

    Each row: n; baseline and steered accuracy with Wilson intervals; the difference (steered - baseline)
    with its paired bootstrap interval; the exact McNemar p-value; the discordant counts (``only_base``:
    right only at baseline, ``only_steer``: right only when steered); ``base_unanswered`` and
    ``steer_unanswered`` (outputs that never reached the scored part). Items are matched by (language, id);
    ValueError if the two runs did not score the same items.
    """
    steer_by_key = {item.key: item for item in steer}
    if len(steer_by_key) != len(steer) or {item.key for item in base} != set(steer_by_key) or len(base) != len(steer):
        raise ValueError("baseline and steered runs must score the same (language, id) items, each once")
    groups = {**_by_language(base), ALL: list(base)}
    rows = []
    for language, items in groups.items():
        b = [item.correct for item in items]
        s = [steer_by_key[item.key].correct for item in items]
        base_ci, steer_ci = wilson_interval(sum(b), len(b), conf), wilson_interval(sum(s), len(s), conf)
        diff = paired_bootstrap_ci(b, s, n_boot=n_boot, seed=seed, conf=conf)
        rows.append({
            "language": language, "n": len(items),
            "base_accuracy": base_ci.estimate, "base_ci_low": base_ci.low, "base_ci_high": base_ci.high,
            "steer_accuracy": steer_ci.estimate, "steer_ci_low": steer_ci.low, "steer_ci_high": steer_ci.high,
            "difference": diff.estimate, "difference_ci_low": diff.low, "difference_ci_high": diff.high,
            "mcnemar_p": mcnemar_test(b, s),
            "only_base": sum(x and not y for x, y in zip(b, s)),
            "only_steer": sum(y and not x for x, y in zip(b, s)),
            "base_unanswered": sum(not item.answered for item in items),
            "steer_unanswered": sum(not steer_by_key[item.key].answered for item in items),
        })
    return rows
