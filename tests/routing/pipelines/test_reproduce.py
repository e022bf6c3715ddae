"""scripts/reproduce.py: every recipe loads, and a recipe-like config runs end to end on a tiny model."""
import json

from routing.pipelines.reproduce import load_recipe
from tests.helpers.scripts import SCRIPTS, script


def test_reproduce_runs_a_recipe_like_config_end_to_end(model_env, tmp_path):
    folder, data, runs = model_env
    recipe = json.loads((SCRIPTS / "recipes" / "qwen3_mgsm.json").read_text())
    recipe.update(name="tiny-mgsm", model=str(folder), window="0:3", expert_selection={"top_n": 2},
                  languages=["en", "fr", "de"], chat=False, dtype="float32",
                  expert_search={"num_samples": 50, "max_passages": 2, "max_length": 256, "batch_size": 4},
                  eval={"limit": 50, "max_new_tokens": 4, "max_length": 256, "buckets": [256], "batch_size": 4})
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(recipe))
    out = runs / "reproduce"
    overrides = ["--window", "1:2", "--langs", "en,fr", "--limit", "1", "--num-samples", "2"]
    assert script("reproduce")([str(path), "--out", str(out), *data, *overrides]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experts_found"] == 2 and summary["paper"]["steered"] == 78.0
    assert summary["overrides"] == {"recipe": {"window": "1:2", "languages": ["en", "fr"]}, "eval": {"limit": 1},
                                    "expert_search": {"num_samples": 2}}
    assert summary["window"] == [1, 2] and summary["recipe"]["languages"] == ["en", "fr"]
    assert summary["steered"]["n"] == 2  # one item in each of the two languages
    experts = json.loads((out / "experts" / "experts.json").read_text())
    assert experts["sequences"]["task"] == 2 and experts["settings"]["window"] == [1, 2]
    assert set(summary["controls"]) == {"outside-window", "language-experts", "random"}
    assert summary["controls"]["language-experts"]["n"] == 1  # English has no language experts
    for sub in ("steered", "control-outside-window", "control-language-experts", "control-random"):
        assert (out / sub / "results.json").is_file() and (out / sub / "config.json").is_file()
    outside = json.loads((out / "control-outside-window" / "config.json").read_text())
    assert outside["steered_experts"]["eng_Latn"]["layers"] == [0, 3]


def test_every_recipe_loads():
    recipes = sorted((SCRIPTS / "recipes").glob("*.json"))
    assert len(recipes) == 6
    rows = {(r.paper["model"], r.paper["task"]): r for r in map(load_recipe, recipes)}
    assert rows[("GPT-OSS", "MGSM")].mode == "hard" and rows[("GPT-OSS", "MGSM")].expert_selection == {"tau": 0.3}
    assert rows[("Qwen3", "MGSM")].window == "7:34"
