"""The task registry: what each task reads, aligned records per language, exemplars, the data experts are
found with, and a new task as one entry (no branch on task names anywhere)."""
import json

import pytest

from routing.data.belebele import Belebele
from routing.data.source import SourceBuilder
from routing.eval import tasks
from routing.eval.results import ItemResult
from routing.eval.tasks import EXPERT_TASKS, TASKS, EvalSettings, Task, get_task, load_task, run_task
from tests.helpers.tiny_olmoe import tfds_dir


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    return {"source_dir": shared_data, "tfds_dir": tfds_dir(tmp_path_factory)}


def test_registry():
    assert list(TASKS) == ["mgsm", "belebele", "medical", "organism"]
    assert EXPERT_TASKS == ("mgsm", "medical", "organism")
    assert all(issubclass(task.builder, SourceBuilder) and task.split == "test" for task in TASKS.values())
    assert TASKS["mgsm"].evaluate is tasks.generation and TASKS["medical"].evaluate is tasks.multiple_choice
    assert TASKS["organism"].evaluate is tasks.generation and TASKS["organism"].data == "organism"
    with pytest.raises(ValueError, match=r"unknown task 'poetry'; choose one of \('mgsm', 'belebele', 'medical', "
                                         r"'organism'\)"):
        get_task("poetry")


def test_records_are_aligned_across_languages(data, shared_data):
    loaded = load_task("mgsm", ["en", "fr", "zho_Hans", "fr"], EvalSettings(limit=3), **data)
    assert loaded.task == "mgsm" and loaded.languages == ("eng_Latn", "fra_Latn", "zho_Hans")
    assert [(r["language"], r["id"]) for r in loaded.records] == [(lang, i) for lang in loaded.languages
                                                                   for i in range(3)]
    first_french = (shared_data / "mgsm" / "mgsm_fr.tsv").read_text(encoding="utf-8").split("\n")[0]
    assert loaded.records[3]["question"] == first_french.rpartition("\t")[0] and loaded.exemplars == {}
    with pytest.raises(ValueError, match=r"mgsm has no data for \['hin_Deva'\]"):
        load_task("mgsm", ["en", "hi"], **data)


def test_exemplars_come_from_the_task_entry(data):
    mgsm = load_task("mgsm", ["en", "fr"], EvalSettings(shots=2, shot_source="mgsm", limit=4), **data)
    shot_ids = {shot["id"] for shot in mgsm.exemplars["fra_Latn"]}
    assert len(shot_ids) == 2 and not shot_ids & {r["id"] for r in mgsm.records}  # no item is its own exemplar
    assert [s["language"] for s in mgsm.exemplars["fra_Latn"]] == ["fra_Latn"] * 2
    gsm8k = load_task("mgsm", ["en", "fr"], EvalSettings(shots=2, limit=4), **data)
    assert gsm8k.exemplars["eng_Latn"] == gsm8k.exemplars["fra_Latn"] and "####" in gsm8k.exemplars["eng_Latn"][0]["answer"]
    assert load_task("belebele", ["en"], EvalSettings(shots=2, limit=1), **data).exemplars == {}  # takes none


def test_expert_data_of_each_task(data, shared_data):
    math = TASKS["mgsm"].experts.conversations(3, seed=0, **data)
    train = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").open(encoding="utf-8")]
    assert len(math) == 3 and all(turns in [[("user", r["question"]), ("assistant", r["answer"])] for r in train]
                                  for turns in math)
    assert math == TASKS["mgsm"].experts.conversations(3, seed=0, **data) != TASKS["mgsm"].experts.conversations(
        3, seed=1, **data)
    medical = TASKS["medical"].experts.conversations(10_000, **data)
    assert len(medical) == 216 and {role for turns in medical for role, _ in turns} == {"user", "assistant"}
    assert TASKS["belebele"].experts is None


def test_a_new_task_is_one_entry(data, monkeypatch):
    calls = []

    def evaluate(model, params, tokenizer, task_data, settings, **run):
        calls.append((task_data.task, settings.limit, sorted(run)))
        return [ItemResult(r["language"], r["id"], True, 0, 0) for r in task_data.records]

    monkeypatch.setitem(TASKS, "reading", Task("reading", Belebele, "test", evaluate))
    loaded = load_task("reading", ["en", "id"], EvalSettings(limit=2), **data)
    assert len(loaded.records) == 4 and loaded.records[0]["passage"]
    assert len(run_task(None, None, None, loaded, EvalSettings(limit=2))) == 4
    assert calls == [("reading", 2, ["batch_size", "buckets", "edit", "eos_ids", "max_length", "progress",
                                     "truncation"])]
