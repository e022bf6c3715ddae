"""Organism training: documents and packing, deterministic resumable training, the held-out metrics, the script's
errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import routing.organism.train as organism_train
from routing.organism.synthetic import ANSWER_MARKER, build_from_spec, build_tokenizer, default_spec
from routing.organism.train import (TrainSettings, init_params, new_model, pack_rows, passages, task_accuracy,
                                    training_documents, training_rows, train)

TINY = TrainSettings(seed=3, steps=4, warmup_steps=1, batch_size=4, seq_len=64, num_layers=2, hidden_size=16,
                     num_heads=2, num_experts=4, top_k=2, expert_size=8)


def tiny_spec() -> dict:
    spec = default_spec(1)
    spec.update(parallel_test=7, task_test=5)
    for entry in spec["languages"]:
        base = entry["code"] == "base"
        entry.update(parallel_train=6, task_train=10 if base else 1, bitext_train=0 if base else 2)
    return spec


@pytest.fixture(scope="module")
def data():
    corpus = build_from_spec(tiny_spec())
    return corpus, build_tokenizer(corpus.languages)


def test_documents_are_the_record_texts(data):
    corpus, tok = data
    docs = training_documents(corpus, tok, seed=0)
    texts = {tok.decode(d, skip_control=True) for d in docs}
    assert all(d[0] == tok.bos_id and d[-1] == tok.eos_id for d in docs)
    n_parallel = sum(map(len, corpus.parallel_train.values()))
    n_bitext = sum(map(len, corpus.bitext_train.values()))
    assert len(docs) == n_parallel + n_bitext + sum(map(len, corpus.task_train.values()))
    for code, examples in corpus.task_train.items():
        assert {e.text for e in examples} <= texts and f"{ANSWER_MARKER} " in examples[0].text
    orders = set()
    for code, pairs in corpus.bitext_train.items():
        for base, other in pairs:
            orders.add(f"{base.text} {other.text}" in texts)
            assert f"{base.text} {other.text}" in texts or f"{other.text} {base.text}" in texts
    assert orders == {True, False}  # both directions occur
    assert training_documents(corpus, tok, seed=0) == docs


def test_packing_keeps_documents_whole_and_rows_are_deterministic(data):
    corpus, tok = data
    docs = [[1, 5, 6, 2], [1, 7, 2], [1, 8, 9, 10, 2]]
    ids, mask = pack_rows(docs, 7, 0, np.random.default_rng(0))
    rows = [list(r[m == 1]) for r, m in zip(ids, mask)]
    pieces = []
    for row in rows:
        for token in row:
            pieces.append([token]) if token == 1 else pieces[-1].append(token)
    assert sorted(pieces) == sorted(docs)
    assert (ids[mask == 0] == 0).all() and all(m[:m.sum()].all() for m in mask)
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows(docs, 4, 0, np.random.default_rng(0))
    a, b = training_rows(corpus, tok, TINY), training_rows(corpus, tok, TINY)
    assert a[0].shape == (TINY.steps * TINY.batch_size, TINY.seq_len)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()


@pytest.mark.slow  # 36 s measured while a training run shared the 2 cores (three short runs, each compiled)
def test_resumed_training_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    corpus, tok = data
    _, uninterrupted, history = train(corpus, tok, TINY, progress=False)
    assert len(history) == TINY.steps

    real = organism_train.make_train_step

    def killed_after_two(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def stepping(state, batch):
            if len(calls) == 2:
                raise KeyboardInterrupt
            calls.append(1)
            return step(state, batch)
        return stepping

    monkeypatch.setattr(organism_train, "make_train_step", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(corpus, tok, TINY, tmp_path / "ckpt", progress=False)
    monkeypatch.undo()
    _, resumed, rest = train(corpus, tok, TINY, tmp_path / "ckpt", progress=False)
    assert len(rest) == TINY.steps - 2 and rest == history[2:]
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dispatch", ["dense", "blocked"])
def test_the_training_step_runs_the_settings_dispatch(data, monkeypatch, dispatch):
    """`TrainSettings.dispatch` is the dispatch the step is built with (the returned model evaluates with "auto")."""
    corpus, tok = data
    seen = []

    def spy(model, *args, **kwargs):
        seen.append(model.dispatch)
        raise InterruptedError

    monkeypatch.setattr(organism_train, "make_train_step", spy)
    with pytest.raises(InterruptedError):
        train(corpus, tok, TrainSettings(**{**TINY.__dict__, "dispatch": dispatch}), progress=False)
    assert seen == [dispatch]


def test_task_accuracy_is_the_greedy_next_token(data):
    corpus, tok = data
    model = organism_train.new_model(TINY.model_config(tok.vocab_size))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    accuracy = task_accuracy(model, params, corpus, tok, batch_size=3)
    forward = jax.jit(lambda ids: model.apply({"params": params}, ids).logits[0, -1])
    for code, examples in corpus.task_test.items():
        correct = 0
        for e in examples:  # one unpadded prompt at a time
            logits = forward(jnp.asarray([tok.encode(f"{e.question} {ANSWER_MARKER}", bos=True)]))
            correct += int(jnp.argmax(logits)) == tok.token_id(str(e.answer))
        assert accuracy[code] == {"accuracy": correct / len(examples), "n": len(examples)}


def test_passages(data):
    corpus, _ = data
    got = passages(corpus, "sov")
    assert [n for n, _ in got] == [0, 1, 2]
    assert got[2][1] == corpus.parallel_test["sov"][6].text
    assert got[0][1] == " ".join(e.text for e in corpus.parallel_test["sov"][:3])


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be >= 1"), ("warmup_steps", 4, "warmup_steps < steps"),
    ("top_k", 5, "exceeds num_experts"), ("hidden_size", 15, "not a multiple"), ("learning_rate", 0.0, "> 0"),
    ("router_init_std", 0.0, "router_init_std must be > 0"), ("dispatch", "auto", "dispatch must be one of"),
])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**{**TINY.__dict__, field: value})


def test_routers_start_at_their_own_scale():
    settings = TrainSettings(**{**TINY.__dict__, "hidden_size": 64, "num_heads": 4, "num_experts": 16,
                                "router_init_std": 0.5})
    model = new_model(settings.model_config(50))
    params = init_params(model, settings)
    kernel = np.asarray(params["stack_0"]["moe"]["router"]["proj"]["kernel"])  # [layers, hidden, experts]
    assert kernel.shape == (2, 64, 16) and abs(kernel.std() - 0.5) < 0.03  # 2048 draws: std error 0.008
    plain = model.init(jax.random.split(jax.random.PRNGKey(settings.seed))[0], jnp.zeros((1, 64), jnp.int32))
    routers = jax.tree_util.keystr(("stack_0", "moe", "router", "proj", "kernel"))
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(plain["params"])):
        if jax.tree_util.keystr(tuple(k.key for k in path)) != routers:  # everything else as initialised
            np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
    again = init_params(model, settings)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))
