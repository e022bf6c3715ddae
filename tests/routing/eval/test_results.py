"""Per-item results: accuracy per language and the paired baseline-vs-steered table, by hand."""
import pytest

from routing.eval.results import ItemResult, accuracy_table, paired_table

BASE = [ItemResult(lang, i, ok, None, None) for lang, i, ok in
        [("a", 0, True), ("a", 1, False), ("b", 0, False), ("b", 1, False)]]
STEER = [ItemResult(r.language, r.id, ok, None, None, answered=i != 3)
         for i, (r, ok) in enumerate(zip(BASE, [True, True, True, False]))]


def test_paired_table_matches_items_by_key():
    rows = {row["language"]: row for row in paired_table(BASE, STEER[::-1], n_boot=100)}
    assert list(rows) == ["a", "b", "all"]
    assert rows["a"]["base_accuracy"] == 0.5 and rows["a"]["steer_accuracy"] == 1.0 and rows["a"]["only_steer"] == 1
    assert rows["all"]["n"] == 4 and rows["all"]["difference"] == 0.5 and rows["all"]["mcnemar_p"] == 0.5
    assert (rows["b"]["base_unanswered"], rows["b"]["steer_unanswered"]) == (0, 1)
    with pytest.raises(ValueError, match="same"):
        paired_table(BASE, STEER[:3])
    with pytest.raises(ValueError, match="same"):
        paired_table(BASE, STEER[:3] + STEER[:1])


def test_accuracy_table_per_language_and_pooled():
    rows = accuracy_table(STEER)
    assert [(row["language"], row["n"], row["correct"]) for row in rows] == [("a", 2, 2), ("b", 2, 1), ("all", 4, 3)]
    assert rows[0]["ci_high"] == 1.0 and rows[-1]["unanswered"] == 1
    with pytest.raises(ValueError, match="no results"):
        accuracy_table([])
