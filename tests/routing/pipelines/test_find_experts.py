"""scripts/find_experts.py end to end on a tiny model with real data: Delta tables, sets and plots; bad inputs,
an unusable tokenizer and a missing download fail first, in one line."""
import json

import pytest

from routing.pipelines import find_experts
from routing.pipelines.experts_file import ExpertSets
from tests.helpers.scripts import script


def test_the_progress_bar_counts_every_sequence_once(expert_search):
    _, bars = expert_search
    assert bars.finished() == {"expert search": (12, 12)}  # 4 task sequences, 2 passages x 4 languages


def test_find_experts_writes_sets_tables_and_plots(experts):
    sets = ExpertSets.from_json(json.loads(experts.read_text()))
    assert len(sets.task_experts) == 3 and all(1 <= layer <= 2 for layer, _ in sets.task_experts)
    assert sets.delta_task.shape == (4, 8) and set(sets.delta_languages) == {"fra_Latn", "deu_Latn", "zho_Hans"}
    assert sets.sequences == {"task": 4, "flores_eng_Latn": 2, "flores_fra_Latn": 2, "flores_deu_Latn": 2,
                              "flores_zho_Hans": 2}
    assert all(len(p) == 3 for p in sets.language_experts.values())
    for name in ("delta_task.png", "delta_fra_Latn.png"):
        assert (experts.parent / name).read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("extra, message", [
    (["--window", "0:4"], "0 <= FIRST <= LAST < 4"),
    (["--window", "1:2", "--top-n", "17"], "top_n must be in [1, 16]"),
    (["--window", "1:2", "--langs", "en"], "drop it from the languages"),
    (["--window", "1:2", "--langs", "xx_Yyyy"], "unknown FLORES-200 language code"),
])
def test_find_experts_bad_inputs(model_env, tmp_path, capsys, extra, message):
    folder, data, _ = model_env
    args = ["--model", str(folder), "--task", "mgsm", "--out", str(tmp_path / "out"), *data]
    if "--top-n" not in extra:
        args += ["--tau", "0.3"]
    with pytest.raises(SystemExit) as exit_info:
        script("find_experts")(args + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_offline_without_data_folder_or_cached_model_fails_in_one_line(model_env, tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("weights loaded before the error")

    monkeypatch.setattr(find_experts, "load_model", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder, _, _ = model_env
    args = ["--task", "mgsm", "--tau", "0.3", "--window", "1:2", "--out", str(tmp_path / "out"),
            "--tfds-dir", str(tmp_path / "tfds"), "--plain"]
    with pytest.raises(SystemExit) as exit_info:
        script("find_experts")(["--model", str(folder), *args])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error and ": error: " in error.splitlines()[-1]
    assert "gsm8k_math: cannot download its source (HF_HUB_OFFLINE is set)" in error and "--data-dir" in error
    with pytest.raises(SystemExit) as exit_info:
        script("find_experts")(["--model", "some-org/not-cached-model", *args])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not in the local HF hub cache" in error
    assert "`hf download some-org/not-cached-model`" in error
