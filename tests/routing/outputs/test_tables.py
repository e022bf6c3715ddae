"""The routing table and window record as files, and divergence curves read back from either table format."""
import csv
import json

import numpy as np
import pytest

from routing.eval.results import ItemResult
from routing.outputs.files import StaleResultError, write_csv, write_json
from routing.outputs.store import ItemStore
from routing.outputs.tables import read_divergence_table, window_record, write_table_csv
from routing.window import Window

TABLE = {"eng_Latn": {"divergence": None, "jsd": None, "entropy": [1.5, 1.25], "consistency": [None, 0.5],
                      "passages": 3, "tokens": 40},
         "fra_Latn": {"divergence": [0.1, 1 / 3], "jsd": [0.05, 0.2], "entropy": [1.0, 2.0], "consistency": [0.25, 0.75],
                      "passages": 3, "tokens": 44}}


def test_table_csv_and_json_read_back_as_the_same_curves(tmp_path):
    write_table_csv(tmp_path / "routing_table.csv", TABLE, moe_layers=[1, 3])
    rows = list(csv.DictReader((tmp_path / "routing_table.csv").open(newline="")))
    assert [(r["language"], r["moe_layer"], r["decoder_layer"]) for r in rows] == [
        ("eng_Latn", "0", "1"), ("eng_Latn", "1", "3"), ("fra_Latn", "0", "1"), ("fra_Latn", "1", "3")]
    assert rows[0]["divergence"] == "" and rows[0]["consistency"] == "" and rows[1]["consistency"] == "0.5"
    assert rows[3]["divergence"] == repr(1 / 3) and rows[3]["tokens"] == "44"  # floats written exactly
    write_json(tmp_path / "routing_table.json", {"per_language": TABLE})
    for name in ("routing_table.csv", "routing_table.json"):
        curves = read_divergence_table(tmp_path / name)
        assert list(curves) == ["fra_Latn"] and curves["fra_Latn"].tolist() == [0.1, 1 / 3]


def test_window_record_names_moe_and_decoder_layers():
    record = window_record(Window(1, 2), [1, 3, 5, 7], selected=True, rule={"fraction": 0.25},
                           mean_curve=np.array([0.5, np.nan, 0.2, 0.4]))
    assert record["moe_layers"] == [1, 2] and record["decoder_layers"] == [3, 5]
    assert record["decoder_layers_in_window"] == [3, 5] and record["source"] == "selected"
    assert record["rule"] == {"fraction": 0.25} and record["mean_divergence"] == [0.5, None, 0.2, 0.4]
    assert window_record(Window(0, 0), [1, 3], selected=False, rule={"fraction": 0.25})["rule"] is None


def test_csv_rows_and_json_are_written_whole(tmp_path):
    write_csv(tmp_path / "rows.csv", [{"a": 1, "b": "x,y"}, {"a": 2.5, "b": None}])
    assert (tmp_path / "rows.csv").read_bytes() == b'a,b\r\n1,"x,y"\r\n2.5,\r\n'
    with pytest.raises(ValueError, match="no rows to write"):
        write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]  # nothing half-written


def test_item_store_round_trip_and_other_settings(tmp_path):
    store = ItemStore(tmp_path)
    items = [ItemResult("tha_Thai", 3, True, 1, 1, [-0.5, -0.1]), ItemResult("tha_Thai", 4, False, 0, 2)]
    assert store.load("tha_Thai", {"limit": 2}) is None
    store.save("tha_Thai", items, {"limit": 2})
    assert store.load("tha_Thai", {"limit": 2}) == items
    with pytest.raises(StaleResultError, match=r"scored with other settings \(limit: 2 -> 3\)"):
        store.load("tha_Thai", {"limit": 3})
    assert json.loads(store.path("tha_Thai").read_text())["settings"] == {"limit": 2}
