"""The model organism: a tiny MoE language model trained on the synthetic multilingual corpus.

Text formats (word-level `routing.organism.synthetic.tokenizer.Tokenizer`):
- monolingual document: ``<bos> <lang:X> words <eos>`` (parallel sentences and task examples);
- bitext document: ``<bos> <lang:base> words <lang:X> words <eos>`` (either direction), the only place the
  model sees two languages side by side;
- analysis sequence: ``<bos> <lang:X> words`` (one sentence); task prompt: ``<bos> <lang:X> question
  <answer>``, whose answer is the single next token ("0" ... "20").

Training packs shuffled documents (never split) into rows of `seq_len` tokens; the rows of every epoch
come from a permutation seeded by (seed, epoch), so the batch of step i is a function of the settings and i.
Trained weights are cached under ``cache_dir/organism-<key>`` (a hash of the settings and the model's parameter
layout); an interrupted run resumes from its orbax checkpoints in ``organism-<key>.partial``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from moe import ModelConfig, MoeTransformer
from moe.train import (LossWeights, checkpoint_manager, fit, init_state, make_train_step, param_path,
                       router_only)
from routing.data.tokenize import TokenBatch
from routing.eval.results import ItemResult
from routing.organism.synthetic.corpus import Corpus, CorpusSizes, build_corpus
from routing.organism.synthetic.languages import make_languages
from routing.organism.synthetic.task import ANSWER_MARKER, answer_tokens
from routing.organism.synthetic.tokenizer import Tokenizer, build_tokenizer
from routing.outputs.cache import default_cache_dir
from routing.outputs.files import write_json

FORMAT_VERSION = 2
BASE = "base"


@dataclasses.dataclass(frozen=True)
class OrganismSettings:
    """Everything that determines the trained organism (its cache key)."""

    seed: int = 0
    parallel_train: tuple[tuple[str, int], ...] = (("base", 2000), ("relex", 2000), ("verbfinal", 2000),
                                                   ("shared", 2000), ("lowres", 200))
    task_train: tuple[tuple[str, int], ...] = (("base", 2000), ("relex", 100), ("verbfinal", 100),
                                               ("shared", 100), ("lowres", 0))
    parallel_test: int = 200
    task_test: int = 200
    task_max_steps: int = 1  # steps per word problem (1 ... this); 2-3 steps were not learned in budget
    shared_fraction: float = 0.5
    bitext_per_language: int = 1000  # base <-> X pairs per language (capped by X's parallel data)
    task_repeats: int = 6  # task documents appear this many times per epoch
    answer_weight: float = 5.0  # loss weight of the answer token (the one after "<answer>"); others get 1
    router_init_scale: float = 10.0  # router kernels start at this multiple of the model's default init
    num_layers: int = 6
    hidden_size: int = 64
    num_heads: int = 4
    num_experts: int = 8
    top_k: int = 2
    expert_size: int = 64
    seq_len: int = 64
    batch_size: int = 32
    steps: int = 400
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    load_balance_weight: float = 0.0  # 0.01 and 0.001 gave lower task accuracy in our runs
    router_z_weight: float = 6e-3  # the weight our tuning runs used; 1e-3 left the task unlearned (seed 0)

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"need 0 <= warmup_steps < steps, got {self.warmup_steps} and {self.steps}")

    def corpus_sizes(self) -> CorpusSizes:
        return CorpusSizes(parallel_train=dict(self.parallel_train), parallel_test=self.parallel_test,
                           task_train=dict(self.task_train), task_test=self.task_test)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """An OLMoE-like config: softmax over all experts, top-k without renormalisation."""
        return ModelConfig(family="olmoe", vocab_size=vocab_size, hidden_size=self.hidden_size,
                           num_layers=self.num_layers, num_heads=self.num_heads, num_kv_heads=self.num_heads,
                           head_dim=self.hidden_size // self.num_heads, num_experts=self.num_experts,
                           top_k=self.top_k, expert_size=self.expert_size, routing_rule="softmax_topk",
                           renormalize=False, max_position_embeddings=self.seq_len)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self, model: MoeTransformer) -> str:
        """A hash of the settings, the format version and `model`'s parameter layout (paths, shapes), so
        weights cached by a model of another structure are never loaded."""
        leaves = jax.tree_util.tree_flatten_with_path(_abstract_params(model))[0]
        layout = [[param_path(k), list(x.shape)] for k, x in leaves]
        text = json.dumps({"format": FORMAT_VERSION, "layout": layout, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Organism:
    settings: OrganismSettings
    corpus: Corpus
    tokenizer: Tokenizer
    model: MoeTransformer
    params: Any
    history: list[dict[str, float]]  # training metrics per step (empty when loaded from the cache)
    key: str  # cache key (`OrganismSettings.key`)


def _abstract_params(model: MoeTransformer) -> Any:
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])


def build_data(settings: OrganismSettings) -> tuple[Corpus, Tokenizer]:
    languages = make_languages(settings.seed, settings.shared_fraction)
    corpus = build_corpus(settings.seed, settings.corpus_sizes(), languages, settings.task_max_steps)
    return corpus, build_tokenizer(corpus.languages)


def _prefix(tokenizer: Tokenizer, lang: str, text: str) -> list[int]:
    return [tokenizer.lang_id(lang), *tokenizer.encode(text)]


def training_documents(corpus: Corpus, tokenizer: Tokenizer, settings: OrganismSettings) -> list[list[int]]:
    """Every document of one epoch, in a fixed order (monolingual parallel text, bitext, task examples)."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    rng = np.random.default_rng([settings.seed, 1])
    docs = [[bos, *_prefix(tokenizer, e.lang, e.text), eos] for ex in corpus.parallel_train.values() for e in ex]
    base = corpus.parallel_train[BASE]
    for lang, examples in corpus.parallel_train.items():
        if lang == BASE:
            continue
        for i in range(min(settings.bitext_per_language, len(examples))):
            pair = [_prefix(tokenizer, BASE, base[i].text), _prefix(tokenizer, lang, examples[i].text)]
            first, second = pair if rng.random() < 0.5 else pair[::-1]
            docs.append([bos, *first, *second, eos])
    task = [[bos, *_prefix(tokenizer, e.lang, e.text), eos] for ex in corpus.task_train.values() for e in ex]
    return docs + task * settings.task_repeats


def pack_rows(docs: Sequence[Sequence[int]], seq_len: int, pad_id: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle documents and pack them greedily, whole, into right-padded rows: (ids, mask) [rows, seq_len]."""
    rows: list[list[int]] = [[]]
    for i in rng.permutation(len(docs)):
        doc = docs[i]
        if len(doc) > seq_len:
            raise ValueError(f"a document of {len(doc)} tokens does not fit seq_len={seq_len}")
        if len(rows[-1]) + len(doc) > seq_len:
            rows.append([])
        rows[-1].extend(doc)
    ids = np.full((len(rows), seq_len), pad_id, np.int32)
    mask = np.zeros((len(rows), seq_len), np.int32)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
    return ids, mask


def training_rows(corpus: Corpus, tokenizer: Tokenizer, settings: OrganismSettings) -> tuple[np.ndarray, np.ndarray]:
    """All rows the training run consumes, epoch after epoch: (ids, mask) [steps * batch_size, seq_len]."""
    docs = training_documents(corpus, tokenizer, settings)
    needed = settings.steps * settings.batch_size
    parts, have, epoch = [], 0, 0
    while have < needed:
        rng = np.random.default_rng([settings.seed, 2, epoch])
        parts.append(pack_rows(docs, settings.seq_len, tokenizer.pad_id, rng))
        have += len(parts[-1][0])
        epoch += 1
    ids = np.concatenate([p[0] for p in parts])[:needed]
    mask = np.concatenate([p[1] for p in parts])[:needed]
    return ids, mask


def optimizer(settings: OrganismSettings) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, settings.warmup_steps,
                                                  settings.steps, settings.learning_rate / 10)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=settings.weight_decay))


def new_model(config: ModelConfig) -> MoeTransformer:
    """The organism's decoder with the default dispatch (blocked on CPU: a training step takes about 1/1.5 of
    the dense dispatch's, measured side by side on 2 cores)."""
    return MoeTransformer(config)


def train(settings: OrganismSettings, corpus: Corpus, tokenizer: Tokenizer, checkpoints: Path | None = None,
          progress: bool = True) -> tuple[MoeTransformer, Any, list[dict[str, float]]]:
    """Train from scratch (resuming from `checkpoints` if it holds a run of the same settings)."""
    model = new_model(settings.model_config(tokenizer.vocab_size))
    params = model.init(jax.random.PRNGKey(settings.seed), jnp.zeros((1, settings.seq_len), jnp.int32))["params"]
    params = jax.tree_util.tree_map_with_path(
        lambda k, x: x * settings.router_init_scale if router_only(param_path(k)) else x, params)
    opt = optimizer(settings)
    step = make_train_step(model, opt, LossWeights(settings.load_balance_weight, settings.router_z_weight))
    ids, mask = training_rows(corpus, tokenizer, settings)
    b = settings.batch_size

    after_answer = np.roll(ids, 1, axis=1) == tokenizer.answer_id
    weight = np.where(after_answer, np.float32(settings.answer_weight), np.float32(1.0))

    def batch_at(i: int) -> dict[str, jax.Array]:
        rows = slice(i * b, (i + 1) * b)
        return {"input_ids": jnp.asarray(ids[rows]), "attention_mask": jnp.asarray(mask[rows]),
                "loss_weight": jnp.asarray(weight[rows])}

    manager = checkpoint_manager(checkpoints) if checkpoints is not None else None
    state, history = fit(init_state(params, opt), step, batch_at, settings.steps, manager=manager,
                         save_every=max(settings.steps // 4, 1), progress=progress, description="train organism")
    if manager is not None:
        manager.close()
    return model, state.params, history


def load_or_train(settings: OrganismSettings, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> Organism:
    """The trained organism from ``cache_dir/organism-<key>``, training and caching it first if absent."""
    corpus, tokenizer = build_data(settings)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model = new_model(settings.model_config(tokenizer.vocab_size))
    key = settings.key(model)
    final = cache / f"organism-{key}"
    if (final / "params").is_dir():
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore((final / "params").absolute(), _abstract_params(model))
        return Organism(settings, corpus, tokenizer, model, params, [], key)
    partial_dir = cache / f"organism-{key}.partial"
    model, params, history = train(settings, corpus, tokenizer, partial_dir / "checkpoints", progress)
    staging = cache / f".organism-{key}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((staging / "params").absolute(), params)
    write_json(staging / "settings.json", settings.to_json())
    (staging / "config.json").write_text(model.config.to_json(), encoding="utf-8")
    tokenizer.save(staging / "tokenizer.json")
    write_json(staging / "history.json", history)
    if final.exists():  # another process finished first: keep its copy
        shutil.rmtree(staging)
    else:
        os.replace(staging, final)
    shutil.rmtree(partial_dir, ignore_errors=True)
    return Organism(settings, corpus, tokenizer, model, params, history, key)


def sentence_batches(tokenizer: Tokenizer, items: Sequence[tuple[Hashable, str, str]], batch_size: int,
                     width: int) -> list[TokenBatch]:
    """Analysis batches of ``<bos> <lang:X> words`` from (key, language, text) items, left-padded to `width`;
    the last batch is filled with empty rows (key None)."""
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        ids = np.full((batch_size, width), tokenizer.pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for r, (_, lang, text) in enumerate(chunk):
            row = [tokenizer.bos_id, *_prefix(tokenizer, lang, text)]
            if len(row) > width:
                raise ValueError(f"a sequence of {len(row)} tokens does not fit width={width}")
            ids[r, width - len(row):], mask[r, width - len(row):] = row, 1
        keys = tuple(k for k, _, _ in chunk) + (None,) * (batch_size - len(chunk))
        batches.append(TokenBatch(ids, mask, keys))
    return batches


def parallel_batches(organism: Organism, lang: str, batch_size: int = 100, split: str = "test") -> list[TokenBatch]:
    """The parallel sentences of `lang` (keyed by meaning id) as analysis batches."""
    examples = (organism.corpus.parallel_test if split == "test" else organism.corpus.parallel_train)[lang]
    return sentence_batches(organism.tokenizer, [(e.id, lang, e.text) for e in examples], batch_size,
                            organism.settings.seq_len)


def task_batches(organism: Organism, lang: str, batch_size: int = 100, split: str = "test") -> list[TokenBatch]:
    """Task prompts ``<bos> <lang:X> question <answer>`` (keyed by problem id) as batches."""
    examples = (organism.corpus.task_test if split == "test" else organism.corpus.task_train)[lang]
    items = [(e.id, lang, f"{e.question} {ANSWER_MARKER}") for e in examples]
    return sentence_batches(organism.tokenizer, items, batch_size, organism.settings.seq_len)


@partial(jax.jit, static_argnums=0)
def _answer_choice(model: MoeTransformer, params: Any, ids: jax.Array, mask: jax.Array, answer_ids: jax.Array,
                   edit: Any) -> jax.Array:
    logits = model.apply({"params": params}, ids, mask, edit=edit).logits[:, -1]
    return jnp.argmax(logits[:, answer_ids], axis=-1)


def task_results(organism: Organism, lang: str, params: Any | None = None, edit: Any = None,
                 split: str = "test") -> list[ItemResult]:
    """Score every task problem of `lang` (corpus order): the prediction is the answer token ("0" ... "20")
    with the highest next-token logit after ``<answer>``, from one batched forward pass per batch."""
    params = organism.params if params is None else params
    tokens = answer_tokens()
    answer_ids = jnp.asarray([organism.tokenizer.token_id(t) for t in tokens])
    examples = (organism.corpus.task_test if split == "test" else organism.corpus.task_train)[lang]
    gold = {e.id: e.answer for e in examples}
    results = []
    for batch in task_batches(organism, lang, split=split):
        choice = np.asarray(_answer_choice(organism.model, params, jnp.asarray(batch.input_ids),
                                           jnp.asarray(batch.attention_mask), answer_ids, edit))
        results += [ItemResult(lang, int(k), int(tokens[c]) == gold[k], int(tokens[c]), gold[k])
                    for c, k in zip(choice, batch.keys) if k is not None]
    return results


def pair_batch_fn(organism: Organism, languages: Sequence[str], pairs: int, alignment_weight: float,
                  seed: int = 0) -> Callable[[int], dict[str, jax.Array]]:
    """`batch_at(step)` for `routing.finetune`: `pairs` training sentences in base (rows [0, pairs)) and the
    same meanings in a language drawn from `languages` per row (rows [pairs, 2 pairs)), plus the weight."""
    corpus, tokenizer = organism.corpus, organism.tokenizer
    pool = [(lang, i) for lang in languages for i in range(len(corpus.parallel_train[lang]))]
    base = corpus.parallel_train[BASE]
    width = 2 + max(len(e.text.split()) for ex in corpus.parallel_train.values() for e in ex)

    def batch_at(step: int) -> dict[str, jax.Array]:
        rng = np.random.default_rng([seed, step])
        chosen = [pool[j] for j in rng.choice(len(pool), pairs, replace=False)]
        items = [(i, BASE, base[i].text) for _, i in chosen]
        items += [(i, lang, corpus.parallel_train[lang][i].text) for lang, i in chosen]
        (batch,) = sentence_batches(tokenizer, items, 2 * pairs, width)
        return {"input_ids": jnp.asarray(batch.input_ids), "attention_mask": jnp.asarray(batch.attention_mask),
                "alignment_weight": jnp.float32(alignment_weight)}

    return batch_at
