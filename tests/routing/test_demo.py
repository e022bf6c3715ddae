"""The demo main job in its --quick setting writes every output; the organism's data and cache are reproducible."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from routing.demo import QUICK, u_shape
from routing.organism import build_data, load_or_train, pack_rows, training_rows

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = ("settings.json", "training.json", "routing_table.json", "divergence.csv", "divergence.png", "window.json",
           "experts.json", "steering.json", "steering.csv", "finetune.json", "finetune.csv",
           "finetune_divergence.png", "summary.json", "summary.md")


def test_quick_demo_writes_every_output_and_caches_the_organism(tmp_path):
    out, cache = tmp_path / "report", tmp_path / "cache"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--quick", "--out", str(out),
                           "--cache", str(cache), "--no-progress"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
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
