"""The four pipelines run unchanged on a tiny organism folder (random OLMoE over the organism's words, its word-level
tokenizer, organism.json): analyze_routing and correlate with --data organism, find_experts and steer_eval with
--task organism, each reading the data from the model's folder (no --data-dir). Passages and problems are the
generator's, answers match HF transformers' greedy generation, and bad organism language codes are refused before
any work."""
import json

import numpy as np
import pytest
import torch
import transformers

import moe
import routing.pipelines.passages
from routing.analysis import analyze_corpus, divergence_curves
from routing.data.source import SourceBuilder
from routing.organism import synthetic
from routing.pipelines.experts_file import ExpertSets
from routing.pipelines.models import load_tokenizer_for
from routing.pipelines.passages import passage_batches
from routing.scoring import extract_last_number
from tests.helpers.organism import tiny_spec, write_tiny_organism
from tests.helpers.scripts import script

LANGS = list(synthetic.build_from_spec(tiny_spec()).languages)  # the base first
BASE, X, Y = LANGS[:3]
ROUTING = ["--plain", "--max-passages", "3", "--max-length", "256", "--batch-size", "4", "--no-progress"]
EVAL = ["--limit", "3", "--max-new-tokens", "2", "--max-length", "256", "--n-boot", "200"]


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    folder = write_tiny_organism(tmp_path_factory.mktemp("organism") / "organism")
    runs = tmp_path_factory.mktemp("organism_runs")
    return folder, ["--tfds-dir", str(runs / "tfds")], runs


@pytest.fixture(scope="module")
def experts(organism):
    folder, data, runs = organism
    argv = ["--model", str(folder), "--task", "organism", "--top-n", "3", "--window", "0:1", "--langs",
            f"{X},{Y}", "--out", str(runs / "experts"), "--num-samples", "8", *data, *ROUTING]
    assert script("find_experts")(argv) == 0
    return runs / "experts" / "experts.json"


@pytest.fixture(scope="module")
def steered(organism, experts):
    folder, data, runs = organism
    argv = ["--model", str(folder), "--task", "organism", "--experts", str(experts), "--langs", ",".join(LANGS),
            "--out", str(runs / "steered"), *data, *ROUTING, *EVAL]
    assert script("steer_eval")(argv) == 0
    return runs / "steered"


@pytest.fixture(scope="module")
def routing_run(organism):
    folder, data, runs = organism
    assert script("analyze_routing")(["--model", str(folder), "--data", "organism", "--out", str(runs / "routing"),
                                      *data, *ROUTING]) == 0
    return runs / "routing"


@pytest.fixture(scope="module")
def hf_answers(organism):
    """HF transformers' greedy output (2 new tokens) for "{question} <answer>" of the first 3 test problems."""
    folder, _, _ = organism
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    answers = {}
    for code, problems in synthetic.build_from_spec(tiny_spec()).task_test.items():
        for problem in problems[:3]:
            ids = tokenizer(f"{problem.question} <answer>", return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=2, do_sample=False, eos_token_id=2, pad_token_id=0)
            answers[(code, problem.id)] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return answers


def test_analyze_routing_measures_the_generators_passages_from_the_base(organism, routing_run):
    folder, _, _ = organism
    table = json.loads((routing_run / "routing_table.json").read_text())
    assert table["reference"] == BASE and table["languages"] == LANGS
    # the reference: routing of passages built here from the generator's sentences, through the same measure
    corpus = synthetic.build_from_spec(tiny_spec())
    passages = {code: [{"passage_id": i, "language": code, "text": " ".join(s.text for s in sentences[3 * i:3 * i + 3])}
                       for i in range(3)] for code, sentences in corpus.parallel_test.items()}
    model, params = moe.from_pretrained(folder)
    tokenizer = load_tokenizer_for(folder, None, model.config)
    batches = passage_batches(tokenizer, passages, chat=False, batch_size=4, max_length=256, truncation="error")
    stats_fn = routing.pipelines.passages.routing_statistics(model)  # one compilation for every language
    curves = divergence_curves({code: analyze_corpus(model, params, rows, seed=0, stats_fn=stats_fn)
                                for code, rows in batches.items()}, BASE)
    for code in LANGS[1:]:
        np.testing.assert_allclose(table["per_language"][code]["divergence"], curves[code], rtol=1e-5, atol=1e-7)


def test_find_experts_compares_base_problems_with_base_passages(experts):
    sets = ExpertSets.from_json(json.loads(experts.read_text()))
    assert sets.sequences == {"task": 8, f"organism_{BASE}": 3, f"organism_{X}": 3, f"organism_{Y}": 3}
    assert sets.delta_task.shape == (2, 8) and set(sets.delta_languages) == {X, Y}
    assert len(sets.task_experts) == 3 and (experts.parent / f"delta_{X}.png").is_file()


def test_steer_eval_prompts_with_the_organisms_template_and_matches_hf(steered, hf_answers):
    config = json.loads((steered / "config.json").read_text())
    assert config["config"]["eval"]["template"] == "{question} <answer>"
    assert config["languages"] == LANGS and config["items_per_language"] == {code: 3 for code in LANGS}
    items = [json.loads(line) for line in (steered / "items.jsonl").read_text().splitlines()]
    assert {(item["language"], item["id"]) for item in items} == set(hf_answers)
    for item in items:
        assert item["baseline"]["detail"] == hf_answers[(item["language"], item["id"])]
        assert item["baseline"]["prediction"] == extract_last_number(item["baseline"]["detail"])
    correlation = json.loads((steered / "correlation.json").read_text())
    assert correlation["divergence_source"] == "computed on organism passages" and correlation["languages"] == LANGS[1:]


def test_correlate_scores_the_organism_task_in_every_language(organism, routing_run, hf_answers):
    folder, data, runs = organism
    out = runs / "correlate"
    analyses = []
    with pytest.MonkeyPatch.context() as patch:  # analyze_routing's stored languages are reused
        patch.setattr(routing.pipelines.passages, "analyze_corpus", lambda *a, **k: analyses.append(a))
        assert script("correlate")(["--model", str(folder), "--data", "organism", "--out", str(out), "--window",
                                    "0:1", "--routing-dir", str(routing_run), *data, *ROUTING, *EVAL]) == 0
    record = json.loads((out / "correlation.json").read_text())
    assert record["reference"] == BASE and record["languages"] == LANGS[1:] and analyses == []
    table = json.loads((routing_run / "routing_table.json").read_text())["per_language"]
    for code in LANGS[1:]:
        assert record["divergence"][code] == pytest.approx(np.mean(table[code]["divergence"][0:2]), rel=1e-6)
    gold = {(code, p.id): p.answer for code, problems in synthetic.build_from_spec(tiny_spec()).task_test.items()
            for p in problems[:3]}
    for row in record["per_language"]:
        expected = np.mean([extract_last_number(text) == gold[key] for key, text in hf_answers.items()
                            if key[0] == row["language"]])
        assert row["organism_accuracy"] == expected and row["items"] == 3


@pytest.mark.parametrize("name, argv, message", [  # a code with a letter added has itself as its closest match
    ("analyze_routing", ["--data", "organism", "--langs", f"{X}x"], f"'{X}x' (close matches: {X}"),
    ("analyze_routing", ["--data", "organism", "--reference", "eng_Latn"], "'eng_Latn'"),
    ("correlate", ["--data", "organism", "--langs", f"{','.join(LANGS[:-1])},{Y}x"], f"'{Y}x' (close matches: {Y}"),
    ("correlate", ["--task", "organism"], "pass --data organism"),
    ("find_experts", ["--task", "organism", "--top-n", "2", "--window", "0:1", "--langs", f"{Y}x"],
     f"'{Y}x' (close matches: {Y}"),
    ("find_experts", ["--task", "organism", "--top-n", "2", "--window", "0:1", "--langs", BASE],
     f"measured against {BASE}; drop it"),
    ("steer_eval", ["--task", "organism", "--experts", "EXPERTS", "--window", "0:1", "--langs", f"{BASE},{X}x"],
     f"'{X}x' (close matches: {X}"),
    ("steer_eval", ["--task", "organism", "--experts", "EXPERTS", "--window", "0:1", "--langs", BASE,
                    "--template", "Q: {question}"], "drop --template"),
])
def test_bad_organism_inputs_are_refused_before_any_work(organism, tmp_path, monkeypatch, capsys, name, argv,
                                                         message):
    def work(*args, **kwargs):
        raise AssertionError("data was prepared or weights were loaded before the refusal")

    monkeypatch.setattr(SourceBuilder, "download_and_prepare", work)
    monkeypatch.setattr(moe, "from_pretrained", work)
    folder, data, _ = organism
    experts = tmp_path / "experts.json"
    experts.write_text("[[0, 1]]")
    argv = [str(experts) if arg == "EXPERTS" else arg for arg in argv]
    with pytest.raises(SystemExit) as exit:
        script(name)(["--model", str(folder), "--out", str(tmp_path / "out"), "--plain", *data, *argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert message in err
