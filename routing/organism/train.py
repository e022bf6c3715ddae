"""Training the model organism: a small OLMoE-style decoder on the synthetic corpus, and its held-out metrics.

What the model sees is exactly the record text, tokenized word by word (no language tags):
- monolingual document ``<bos> sentence <eos>`` (every language's parallel training sentences);
- bitext document ``<bos> base sentence  other sentence <eos>`` (either order), pairing each language with
  the base;
- task document ``<bos> question <answer> N <eos>`` (the answer token's loss is weighted `answer_weight`).

Documents are shuffled and packed whole into rows of `seq_len` tokens, epoch after epoch, from permutations
seeded by (seed, epoch): the batch of step i is a function of the corpus, the settings and i, so a run is
deterministic and resumes (from orbax checkpoints of `moe.train.fit`) to exactly the uninterrupted result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe import ModelConfig, MoeTransformer
from moe.export import olmoe_config
from moe.train import LossWeights, checkpoint_manager, fit, init_state, make_train_step
from routing.analysis import analyze_corpus, divergence_curves, statistics_fn
from routing.data.organism import passage_groups
from routing.data.tokenize import TokenBatch, pad_rows
from routing.organism.synthetic import ANSWER_MARKER, Corpus, Tokenizer
from routing.outputs.cache import default_cache_dir


# Dispatch modes a training run may record: "auto" would record the mode name, not the path it chose, and
# "megablox" runs on TPU only.
TRAINING_DISPATCH = ("dense", "blocked", "ragged")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The model's shape and the optimisation; with the data spec, everything that determines the weights."""

    seed: int = 0
    steps: int = 900
    batch_size: int = 32
    seq_len: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    answer_weight: float = 5.0  # loss weight of the answer token (the one after "<answer>"); others get 1
    router_z_weight: float = 1e-3
    load_balance_weight: float = 0.01
    # Routers start at N(0, router_init_std^2), the other weights at N(0, 0.02^2). With 0.02 the routers stayed
    # near-uniform (passage-level log E - H about 0.01 nats, against 0.05-0.15 with 0.2), and the paper's
    # entropy-normalised JSD then divides one small number by another.
    router_init_std: float = 0.2
    num_layers: int = 8
    hidden_size: int = 64
    num_heads: int = 4
    num_experts: int = 8
    top_k: int = 2
    expert_size: int = 64
    # The dispatch of the training step, one that runs on every backend. Paths round differently, so it
    # determines the weights too: the shipped organism was trained "dense"; "blocked" (what "auto" picks on CPU)
    # is faster on CPU (README, "The model organism").
    dispatch: str = "dense"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "num_layers", "hidden_size", "num_heads", "num_experts",
                     "top_k", "expert_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"need 0 <= warmup_steps < steps, got {self.warmup_steps} and {self.steps}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.router_init_std <= 0:
            raise ValueError(f"router_init_std must be > 0, got {self.router_init_std}")
        if self.dispatch not in TRAINING_DISPATCH:
            raise ValueError(f"dispatch must be one of {TRAINING_DISPATCH}, got {self.dispatch!r}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The config `moe.export` writes exactly as HF OLMoE (`moe.export.olmoe_config`)."""
        return olmoe_config(vocab_size=vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                            num_heads=self.num_heads, num_experts=self.num_experts, top_k=self.top_k,
                            expert_size=self.expert_size)


def run_key(spec: Mapping[str, Any], settings: TrainSettings) -> str:
    """A hash of the spec and the settings: checkpoints of another run are never resumed."""
    text = json.dumps({"spec": spec, "settings": dataclasses.asdict(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_work_dir(spec: Mapping[str, Any], settings: TrainSettings) -> Path:
    """Where a run keeps its checkpoints unless told: one folder per `run_key` in the cache folder."""
    return default_cache_dir() / "organism-train" / run_key(spec, settings)


def training_documents(corpus: Corpus, tokenizer: Tokenizer, seed: int) -> list[list[int]]:
    """Every document of one epoch, in a fixed order (monolingual sentences, bitext, task examples)."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    rng = np.random.default_rng([seed, 1])
    docs = [[bos, *tokenizer.encode(e.text), eos] for examples in corpus.parallel_train.values() for e in examples]
    for pairs in corpus.bitext_train.values():
        for base, other in pairs:
            first, second = (base, other) if rng.random() < 0.5 else (other, base)
            docs.append([bos, *tokenizer.encode(first.text), *tokenizer.encode(second.text), eos])
    docs += [[bos, *tokenizer.encode(e.text), eos] for examples in corpus.task_train.values() for e in examples]
    return docs


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


def training_rows(corpus: Corpus, tokenizer: Tokenizer, settings: TrainSettings) -> tuple[np.ndarray, np.ndarray]:
    """All rows the run consumes, epoch after epoch: (ids, mask) [steps * batch_size, seq_len]."""
    docs = training_documents(corpus, tokenizer, settings.seed)
    needed = settings.steps * settings.batch_size
    parts, have, epoch = [], 0, 0
    while have < needed:
        parts.append(pack_rows(docs, settings.seq_len, tokenizer.pad_id,
                               np.random.default_rng([settings.seed, 2, epoch])))
        have += len(parts[-1][0])
        epoch += 1
    return (np.concatenate([p[0] for p in parts])[:needed], np.concatenate([p[1] for p in parts])[:needed])


def optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, settings.warmup_steps,
                                                  settings.steps, settings.learning_rate / 10)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=settings.weight_decay))


def new_model(config: ModelConfig) -> MoeTransformer:
    """The organism's decoder, with dispatch "auto" (`moe.dispatch.choose`); training runs
    `TrainSettings.dispatch`."""
    return MoeTransformer(config)


def init_params(model: MoeTransformer, settings: TrainSettings) -> Any:
    """Fresh parameters from `settings.seed`, the routers' kernels redrawn at `settings.router_init_std`."""
    key, router_key = jax.random.split(jax.random.PRNGKey(settings.seed))
    params = model.init(key, jnp.zeros((1, settings.seq_len), jnp.int32))["params"]
    stacks = sorted(name for name, value in params.items() if isinstance(value, dict) and "moe" in value)
    if not stacks:
        raise ValueError("the model has no MoE layer stack whose routers could be initialised")
    keys = jax.random.split(router_key, len(stacks))
    for name, k in zip(stacks, keys):
        proj = params[name]["moe"]["router"]["proj"]
        proj["kernel"] = settings.router_init_std * jax.random.normal(k, proj["kernel"].shape, proj["kernel"].dtype)
    return params


def train(corpus: Corpus, tokenizer: Tokenizer, settings: TrainSettings, checkpoints: str | Path | None = None,
          progress: bool = True) -> tuple[MoeTransformer, Any, list[dict[str, float]]]:
    """Train from scratch, or resume from the orbax checkpoints in `checkpoints` (a run of the same corpus and
    settings); returns the model, its parameters and the metrics of the steps run in this call."""
    model = new_model(settings.model_config(tokenizer.vocab_size))
    params = init_params(model, settings)
    opt = optimizer(settings)
    step = make_train_step(model.clone(dispatch=settings.dispatch), opt,
                           LossWeights(settings.load_balance_weight, settings.router_z_weight))
    ids, mask = training_rows(corpus, tokenizer, settings)
    after_answer = np.roll(ids, 1, axis=1) == tokenizer.answer_id
    weight = np.where(after_answer, np.float32(settings.answer_weight), np.float32(1.0))
    b = settings.batch_size

    def batch_at(i: int) -> dict[str, jax.Array]:
        rows = slice(i * b, (i + 1) * b)
        return {"input_ids": jnp.asarray(ids[rows]), "attention_mask": jnp.asarray(mask[rows]),
                "loss_weight": jnp.asarray(weight[rows])}

    manager = checkpoint_manager(checkpoints) if checkpoints is not None else None
    try:
        state, history = fit(init_state(params, opt), step, batch_at, settings.steps, manager=manager,
                             save_every=max(settings.steps // 10, 1), progress=progress,
                             description="train organism")
    finally:
        if manager is not None:
            manager.close()
    return model, state.params, history


def left_padded(tokenizer: Tokenizer, items: Sequence[tuple[Any, str]], batch_size: int) -> list[TokenBatch]:
    """Batches of ``<bos> text`` from (key, text) items, left-padded to the longest row of each batch; the last
    batch is filled with empty rows (key None)."""
    batches = []
    for start in range(0, len(items), batch_size):
        rows = [(tokenizer.encode(text, bos=True), key) for key, text in items[start:start + batch_size]]
        batches.append(pad_rows(rows, batch_size, max(len(ids) for ids, _ in rows), tokenizer.pad_id))
    return batches


@partial(jax.jit, static_argnums=0)
def _next_token(model: MoeTransformer, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.argmax(model.apply({"params": params}, ids, mask, last_only=True).logits[:, -1], axis=-1)


def task_accuracy(model: MoeTransformer, params: Any, corpus: Corpus, tokenizer: Tokenizer,
                  batch_size: int = 250) -> dict[str, dict[str, float]]:
    """Per language, {"accuracy", "n"} on the held-out task items: the greedy next token after
    ``<bos> question <answer>`` (argmax over the whole vocabulary) must be the answer."""
    out = {}
    for code, examples in corpus.task_test.items():
        gold = {e.id: tokenizer.token_id(str(e.answer)) for e in examples}
        items = [(e.id, f"{e.question} {ANSWER_MARKER}") for e in examples]
        correct = 0
        for batch in left_padded(tokenizer, items, batch_size):
            pred = np.asarray(_next_token(model, params, jnp.asarray(batch.input_ids),
                                          jnp.asarray(batch.attention_mask)))
            correct += sum(int(p) == gold[k] for p, k in zip(pred, batch.keys) if k is not None)
        out[code] = {"accuracy": correct / len(examples), "n": len(examples)}
    return out


def passages(corpus: Corpus, code: str) -> list[tuple[int, str]]:
    """(passage number, text) of `code`'s parallel test passages as `routing.data.organism` builds them, aligned
    across languages."""
    return [(n, " ".join(e.text for e in group)) for n, group in enumerate(passage_groups(corpus.parallel_test[code]))]


def divergence_from_base(model: MoeTransformer, params: Any, corpus: Corpus, tokenizer: Tokenizer,
                         batch_size: int = 100) -> dict[str, list[float]]:
    """Per non-base language, the entropy-normalised JSD of its experts distributions from the base language's
    on the aligned test passages, per layer (`routing.analysis.divergence_curves`)."""
    fn = statistics_fn(model)
    routing = {code: analyze_corpus(model, params, left_padded(tokenizer, passages(corpus, code), batch_size),
                                    stats_fn=fn) for code in corpus.languages}
    base = next(iter(corpus.languages))
    return {code: [float(x) for x in curve] for code, curve in divergence_curves(routing, base).items()}
