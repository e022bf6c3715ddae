"""The demo main job in its --quick setting writes every output; the organism's data and cache are reproducible."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from routing.organism import demo
from routing.organism.demo import QUICK, u_shape
from routing.organism.model import build_data, load_or_train, pack_rows, training_rows
from tests.helpers.scripts import SCRIPTS, script

REPO = Path(__file__).resolve().parents[3]
OUTPUTS = ("settings.json", "training.json", "routing_table.json", "divergence.csv", "divergence.png", "window.json",
           "experts.json", "steering.json", "steering.csv", "finetune.json", "finetune.csv",
           "finetune_divergence.png", "summary.json", "summary.md")
FINETUNE_OUTPUTS = ("finetune.json", "finetune.csv", "finetune_divergence.png")


@pytest.mark.slow
def test_quick_demo_writes_every_output_caches_the_organism_and_never_mixes_runs(tmp_path):
    out, cache = tmp_path / "report", tmp_path / "cache"
    command = [sys.executable, str(SCRIPTS / "demo.py"), "--quick", "--out", str(out), "--cache", str(cache),
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report folder: {out.resolve()}" in done.stdout
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    summary = json.loads((out / "summary.json").read_text())
    languages = set(summary["languages"])
    assert {"base", "relex", "verbfinal", "shared", "lowres", "non-base"} <= languages
    steering = json.loads((out / "steering.json").read_text())["conditions"]
    assert set(steering) == {"steered", "outside_window", "random_experts"}
    assert not json.loads((out / "training.json").read_text())["from_cache"]
    organism = load_or_train(QUICK.organism, cache, progress=False)  # the second time: from the cache
    assert organism.history == [] and organism.key == summary["organism_key"]

    report = {p.name: p.read_bytes() for p in out.iterdir()}
    seed1 = subprocess.Popen([*command, "--seed", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # killed as soon as it starts building its report
        while not list(tmp_path.glob(".report.tmp-*")) and seed1.poll() is None:
            time.sleep(0.05)
    finally:
        seed1.kill()
        seed1.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == report  # the seed-0 report, untouched and whole
    assert len(list(tmp_path.glob(".report.tmp-*"))) == 1
    rerun = subprocess.run([*command, "--no-finetune"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(set(OUTPUTS) - set(FINETUNE_OUTPUTS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "report"]  # the killed run's folder is gone


def test_training_rows_are_seeded_and_keep_documents_whole():
    corpus, tokenizer = build_data(QUICK.organism)
    assert {len(p.steps) for p in corpus.problems.values()} == {1}  # task_max_steps=1
    first, again = training_rows(corpus, tokenizer, QUICK.organism), training_rows(corpus, tokenizer, QUICK.organism)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    ids, mask = first
    assert ids.shape == (QUICK.organism.steps * QUICK.organism.batch_size, QUICK.organism.seq_len)
    starts = (ids == tokenizer.bos_id).sum()
    ends = (ids == tokenizer.eos_id).sum()
    assert starts == ends and np.all(ids[mask == 0] == tokenizer.pad_id)
    docs = [[1, 5, 2], [1, 6, 7, 2], [1, 8, 2]]
    packed, packed_mask = pack_rows(docs, 7, 0, np.random.default_rng(0))
    assert sorted(packed[packed_mask == 1].tolist()) == sorted(sum(docs, []))


def test_u_shape_rule():
    assert u_shape(np.array([0.5, 0.2, 0.1, 0.3, 0.6]), 0.1)["u_shaped"]
    assert not u_shape(np.array([0.1, 0.2, 0.3, 0.4]), 0.1)["u_shaped"]  # minimum at the first layer
    assert not u_shape(np.array([0.5, 0.1, 0.11, 0.12]), 0.1)["u_shaped"]  # the last layer barely rises


def test_bad_settings_and_folders_fail_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the demo started before the error")

    monkeypatch.setattr(demo, "load_or_train", forbidden)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("not a report")
    (tmp_path / "file").write_text("")
    cases = [(["--lam", "1e39"], "lam must be finite in float32"), (["--lam", "nan"], "lam must be finite"),
             (["--lam", "0"], "lam must be non-zero"),
             (["--out", str(tmp_path / "mine")], "holds files that are not a demo report"),
             (["--out", str(tmp_path / "file")], "is a file, not a folder"),
             (["--cache", str(tmp_path / "file")], "is a file, not a folder"),
             (["--window", "0:9"], "0 <= FIRST <= LAST")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            script("demo")(["--quick", "--out", str(tmp_path / "report"), *args])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in error and "Traceback" not in error, args
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "not a report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]
