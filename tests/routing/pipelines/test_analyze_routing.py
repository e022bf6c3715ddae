"""scripts/analyze_routing.py end to end: a tiny random OLMoE with the real OLMoE tokenizer over real FLORES
passages, checked against a slow NumPy reference from full per-token router logits; resume; bad inputs."""
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import moe
import routing.pipelines.analyze_routing
import routing.pipelines.passages
from routing.analysis import select_middle_window, statistics_fn
from routing.data.tokenize import load_tokenizer
from routing.outputs.store import LanguageStore
from routing.pipelines.models import model_fingerprint
from tests.helpers.hf_reference import tiny_model
from tests.helpers.progress import Bars
from tests.helpers.scripts import SCRIPTS, script_module

SCRIPT = SCRIPTS / "analyze_routing.py"
LANGS = ["eng_Latn", "fra_Latn", "arb_Arab", "hin_Deva", "zho_Hans"]
PASSAGES, MAX_LENGTH, TOP_K, PAIRS = 6, 128, 2, 2048
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
FINAL = ["routing_table.json", "routing_table.csv", "middle_window.json", "divergence_by_layer.png",
         "expert_usage.png"]

script = script_module("analyze_routing")


class CountingAnalysis:
    """Stands in for routing.pipelines.passages.analyze_corpus: counts calls, raises KeyboardInterrupt on call
    `stop`."""

    def __init__(self, stop: int | None = None):
        self.calls, self.stop, self.real = 0, stop, routing.pipelines.passages.analyze_corpus

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def run_main(argv: list[str], stop: int | None = None, bars: Bars | None = None) -> tuple[int, int]:
    """(exit code, number of languages analysed) of an in-process run; ``bars`` records its progress bars."""
    spy = CountingAnalysis(stop)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(routing.pipelines.passages, "analyze_corpus", spy)
        patch.setattr(routing.pipelines.analyze_routing, "tqdm", bars or Bars())
        try:
            return script.main(argv), spy.calls
        except SystemExit as exit:
            return exit.code, spy.calls


@pytest.fixture(scope="module")
def setup(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("analyze_routing")
    model_dir = root / "model"
    tiny_model("olmoe", vocab_size=50304, num_hidden_layers=4, hidden_size=32, intermediate_size=32,
               num_experts_per_tok=TOP_K).save_pretrained(model_dir)
    shutil.copy(shared_data / "tokenizers" / "olmoe" / "tokenizer.json", model_dir)
    (root / "template.jinja").write_text(TEMPLATE)
    args = ["--model", str(model_dir), "--data-dir", str(shared_data), "--tfds-dir", str(root / "tfds"),
            "--chat-template", str(root / "template.jinja"), "--max-passages", str(PASSAGES),
            "--max-length", str(MAX_LENGTH), "--truncate", "keep_start", "--batch-size", "4",
            "--consistency-pairs", str(PAIRS)]
    return {"root": root, "model_dir": model_dir, "args": args}


@pytest.fixture(scope="module")
def loaded(setup: dict) -> tuple:
    """(model, params, tokenizer) of the tiny checkpoint, for the references."""
    return (*moe.from_pretrained(setup["model_dir"]), load_tokenizer(setup["model_dir"]))


@pytest.fixture(scope="module")
def resumed_run(setup: dict) -> dict:
    """A run interrupted during its third language, then run again to completion."""
    out = setup["root"] / "out"
    argv = [*setup["args"], "--langs", ",".join(LANGS[1:]), "--out", str(out), "--no-progress"]
    with pytest.raises(KeyboardInterrupt):
        run_main(argv, stop=3)
    after_interrupt = sorted(path.name for path in out.rglob("*"))
    bars = Bars()
    code, calls = run_main(argv, bars=bars)
    return {"out": out, "argv": argv, "after_interrupt": after_interrupt, "code": code, "calls": calls, "bars": bars}


def test_help_in_a_subprocess() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--langs" in result.stdout and "--restart" in result.stdout


def test_interrupted_run_resumes_without_redoing_languages(resumed_run: dict) -> None:
    assert resumed_run["after_interrupt"] == ["eng_Latn.npz", "fra_Latn.npz", "languages"]  # no final files
    assert resumed_run["code"] == 0 and resumed_run["calls"] == 3
    out = resumed_run["out"]
    assert all((out / name).is_file() for name in FINAL)
    assert sorted(p.name for p in (out / "languages").iterdir()) == sorted(f"{code}.npz" for code in LANGS)
    total = PASSAGES * len(LANGS)  # the two languages reused from the interrupted run count too
    assert resumed_run["bars"].finished() == {"FLORES routing": (total, total)}


@pytest.fixture(scope="module")
def reference(loaded: tuple, shared_data: Path) -> dict[str, dict]:
    """Per language: token ids, q [L, N, E], counts, lengths and exact all-pairs consistency, from one plain
    forward pass over right-padded passages (FLORES read directly, without TFDS)."""
    flores = shared_data / "flores200"
    with (flores / "metadata_devtest.tsv").open(newline="") as handle:
        urls = [row["URL"] for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    starts = [i for i in range(len(urls)) if i == 0 or urls[i] != urls[i - 1]][:PASSAGES + 1]
    model, params, tokenizer = loaded
    texts = []
    for code in LANGS:
        sentences = (flores / "devtest" / f"{code}.devtest").read_text(encoding="utf-8").split("\n")
        texts += [" ".join(sentences[a:b]) for a, b in zip(starts, starts[1:])]
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": t}], chat_template=TEMPLATE,
                                              tokenize=False, add_generation_prompt=True) for t in texts]
    ids = [row[:MAX_LENGTH] for row in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    batch = np.zeros((len(ids), MAX_LENGTH), np.int32)
    mask = np.zeros_like(batch)
    for i, row in enumerate(ids):  # right padding: real tokens never attend to it
        batch[i, :len(row)], mask[i, :len(row)] = row, 1
    spans = mask.sum(axis=1)
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(batch), jnp.asarray(mask)).router_logits,
                        np.float64)
    result = {}
    for n, code in enumerate(LANGS):
        q, counts, consistency = [], [], []
        for i in range(n * PASSAGES, (n + 1) * PASSAGES):
            z = logits[:, i, :spans[i]]
            probs = np.exp(z - z.max(-1, keepdims=True))
            q.append((probs / probs.sum(-1, keepdims=True)).mean(axis=1))
            chosen = np.zeros(z.shape, bool)
            np.put_along_axis(chosen, np.argsort(-z, axis=-1)[..., :TOP_K], True, axis=-1)
            counts.append(chosen.sum(axis=1))
            inter = (chosen[:, :, None] & chosen[:, None]).sum(-1)
            union = (chosen[:, :, None] | chosen[:, None]).sum(-1)
            off_diagonal = ~np.eye(spans[i], dtype=bool)
            consistency.append((inter / union)[:, off_diagonal].mean(axis=-1))
        result[code] = {"q": np.stack(q, 1), "counts": np.stack(counts, 1), "consistency": np.stack(consistency, 1),
                        "lengths": spans[n * PASSAGES:(n + 1) * PASSAGES], "ids": ids[n * PASSAGES:(n + 1) * PASSAGES]}
    return result


def numpy_divergence(p: np.ndarray, q: np.ndarray, normalized: bool) -> np.ndarray:
    """The paper's formula per passage, averaged over passages: [L, N, E] x 2 -> [L]."""
    m = np.maximum((p + q) / 2, 1e-10)

    def kl_to_m(x: np.ndarray) -> np.ndarray:
        return (x * np.log(np.where(x > 0, x / m, 1.0))).sum(-1)

    def entropy(x: np.ndarray) -> np.ndarray:
        return -(x * np.log(x + 1e-10)).sum(-1)

    value = kl_to_m(p) / 2 + kl_to_m(q) / 2
    if normalized:
        value = value / np.maximum(math.log(p.shape[-1]) - (entropy(p) + entropy(q)) / 2, 1e-6)
    return value.mean(axis=-1)


def test_outputs_match_slow_reference(reference: dict, resumed_run: dict) -> None:
    out = resumed_run["out"]
    table = json.loads((out / "routing_table.json").read_text())
    assert table["languages"] == LANGS and table["reference"] == "eng_Latn" and table["moe_layers"] == [0, 1, 2, 3]
    eng = reference["eng_Latn"]
    store = LanguageStore(out / "languages")
    for code in LANGS:
        row, ref = table["per_language"][code], reference[code]
        stored = store.load(code).aligned([(i,) for i in range(PASSAGES)])
        np.testing.assert_allclose(stored.q, ref["q"], atol=1e-6)
        np.testing.assert_array_equal(stored.lengths, ref["lengths"])
        assert row["passages"] == PASSAGES and row["tokens"] == ref["lengths"].sum()
        entropy = -(ref["q"] * np.log(ref["q"] + 1e-10)).sum(-1).mean(-1)
        np.testing.assert_allclose(row["entropy"], entropy, atol=1e-5)
        np.testing.assert_allclose(row["consistency"], ref["consistency"].mean(-1), atol=0.03)
        rates = (ref["counts"] / ref["lengths"][None, :, None]).mean(axis=1)
        np.testing.assert_allclose(row["activation_rate"], rates, atol=0.01)
        if code == "eng_Latn":
            assert row["divergence"] is None and row["jsd"] is None
            continue
        np.testing.assert_allclose(row["divergence"], numpy_divergence(eng["q"], ref["q"], True), rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(row["jsd"], numpy_divergence(eng["q"], ref["q"], False), rtol=1e-4, atol=1e-7)

    curves = {code: np.array(table["per_language"][code]["divergence"]) for code in LANGS[1:]}
    window = json.loads((out / "middle_window.json").read_text())
    first, last = select_middle_window(curves)
    assert window["moe_layers"] == [first, last] and window["decoder_layers"] == [first, last]
    assert window["source"] == "selected" and table["window"] == window
    with (out / "routing_table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(LANGS) * 4
    fra = [r for r in rows if r["language"] == "fra_Latn"]
    np.testing.assert_allclose([float(r["divergence"]) for r in fra], table["per_language"]["fra_Latn"]["divergence"])
    for name in ("divergence_by_layer.png", "expert_usage.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deleted_language_alone_is_recomputed_and_window_override(resumed_run: dict) -> None:
    out, languages = resumed_run["out"], resumed_run["out"] / "languages"
    before = {p.name: p.stat().st_mtime_ns for p in languages.iterdir()}
    (languages / "arb_Arab.npz").unlink()
    code, calls = run_main([*resumed_run["argv"], "--window", "1:2", "--heatmap-layers", "1,3"])
    assert code == 0 and calls == 1
    after = {p.name: p.stat().st_mtime_ns for p in languages.iterdir()}
    assert {k: v for k, v in after.items() if k != "arb_Arab.npz"} == {k: v for k, v in before.items()
                                                                      if k != "arb_Arab.npz"}
    window = json.loads((out / "middle_window.json").read_text())
    assert window["source"] == "override" and window["moe_layers"] == [1, 2]
    assert window["decoder_layers_in_window"] == [1, 2]
    assert json.loads((out / "routing_table.json").read_text())["heatmap_layers"] == [1, 3]


def test_other_settings_are_refused_not_reused(resumed_run: dict, capsys: pytest.CaptureFixture) -> None:
    argv = [*resumed_run["argv"], "--max-passages", "5"]
    stamps = {p: p.stat().st_mtime_ns for p in resumed_run["out"].rglob("*")}
    code, calls = run_main(argv)
    assert code == 2 and calls == 0
    error = capsys.readouterr().err
    assert "max_passages: 6 -> 5" in error and "--restart" in error
    assert {p: p.stat().st_mtime_ns for p in resumed_run["out"].rglob("*")} == stamps


@pytest.mark.parametrize("change, message", [
    ({"--langs": "fra_Latm,deu_Latn"}, "fra_Latn"),
    ({"--langs": ","}, "no languages given"),
    ({"--langs": "eng_Latn"}, "empty selection"),
    ({"--max-passages": "0"}, "empty selection"),
    ({"--data-dir": "EMPTY"}, "lacks FLORES-200 files"),
    ({"--model": "EMPTY"}, "not a model folder"),
    ({"--chat-template": None}, "no chat template"),
    ({"--window": "2:9"}, "0 <= FIRST <= LAST < 4"),
])
def test_bad_inputs_fail_clearly_before_writing(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                change: dict, message: str) -> None:
    (tmp_path / "empty").mkdir()
    options = dict(zip(setup["args"][::2], setup["args"][1::2])) | {"--langs": "fra_Latn,arb_Arab"}
    options.update({key: str(tmp_path / "empty") if value == "EMPTY" else value for key, value in change.items()})
    argv = [item for key, value in options.items() if value is not None for item in (key, value)]
    code, calls = run_main([*argv, "--no-progress", "--out", str(tmp_path / "out")])
    assert code == 2 and calls == 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_padding_invariance_through_the_model(loaded: tuple, reference: dict, resumed_run: dict) -> None:
    """A passage analysed alone gives the q the run stored for it from a left-padded batch (1e-6)."""
    model, params, _ = loaded
    ids = reference["eng_Latn"]["ids"]
    shortest = int(np.argmin([len(row) for row in ids]))
    assert len(ids[shortest]) < MAX_LENGTH  # so it was padded in the run
    alone = statistics_fn(model, num_pairs=8)(params, jnp.asarray([ids[shortest]]),
                                               jnp.ones((1, len(ids[shortest])), jnp.int32), None)
    stored = LanguageStore(resumed_run["out"] / "languages").load("eng_Latn").aligned([(shortest,)])
    np.testing.assert_allclose(stored.q[:, 0], alone.q[:, 0], atol=1e-6)
    np.testing.assert_array_equal(stored.counts[:, 0], alone.counts[:, 0])


def test_new_weights_of_the_same_shape_are_refused_not_reused(setup: dict, resumed_run: dict,
                                                             capsys: pytest.CaptureFixture) -> None:
    weights = setup["model_dir"] / "model.safetensors"
    original = weights.read_bytes()
    other = setup["root"] / "other_weights"
    tiny_model("olmoe", seed=1, vocab_size=50304, num_hidden_layers=4, hidden_size=32, intermediate_size=32,
               num_experts_per_tok=TOP_K).save_pretrained(other)
    new = (other / "model.safetensors").read_bytes()
    assert len(new) == len(original) and new != original
    try:
        weights.write_bytes(new)
        code, calls = run_main(resumed_run["argv"])
    finally:
        weights.write_bytes(original)
    assert code == 2 and calls == 0
    error = capsys.readouterr().err
    assert "model_fingerprint" in error and "--restart" in error
    assert run_main(resumed_run["argv"]) == (0, 0)  # the original weights are recognised again


def test_corrupt_stored_language_is_named_with_the_remedy(resumed_run: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    shutil.copytree(resumed_run["out"], out)
    stored = out / "languages" / "hin_Deva.npz"
    stored.write_bytes(stored.read_bytes()[:200])
    argv = [*resumed_run["argv"][:-3], "--out", str(out), "--no-progress"]
    assert resumed_run["argv"][-3] == "--out"
    code, calls = run_main(argv)
    assert code == 2 and calls == 0
    error = capsys.readouterr().err
    assert f"{stored} cannot be read" in error and "--restart" in error and "Traceback" not in error


def test_wrong_tokenizer_and_unusable_out_fail_before_any_work(setup: dict, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    small = tmp_path / "small_vocab"  # a config only: the check must come before any weight is read
    small.mkdir()
    config = json.loads((setup["model_dir"] / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    shutil.copy(setup["model_dir"] / "tokenizer.json", small)
    options = dict(zip(setup["args"][::2], setup["args"][1::2])) | {"--langs": "fra_Latn"}
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    for change, message in (({"--model": str(small), "--out": str(tmp_path / "out")},
                             "has token ids up to 50279, but the model's vocabulary holds 1000"),
                            ({"--out": str(a_file)}, f"{a_file} is a file, not a folder"),
                            ({"--out": str(a_file / "out")}, f"cannot create {a_file / 'out'}")):
        argv = [item for key, value in (options | change).items() for item in (key, value)]
        code, calls = run_main([*argv, "--no-progress"])
        assert code == 2 and calls == 0
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_fingerprint_follows_file_contents_not_hidden_caches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MOE_ROUTING_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    transformers.OlmoeConfig().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"weights-1")
    key = model_fingerprint(folder)
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "model.safetensors.lock").write_text("download bookkeeping")
    assert model_fingerprint(folder) == key
    (folder / "model.safetensors").write_bytes(b"weights-2")  # same size, other weights
    assert model_fingerprint(folder) != key
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        model_fingerprint(tmp_path / "cache")
