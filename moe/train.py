"""Generic training for the MoE decoder: train state, jitted step, resumable loop with orbax checkpoints.

Loss of one step (every term averaged as documented on its function):

    total = w_ce * cross_entropy + w_lb * load_balance + w_z * router_z + extra_loss

`extra_loss(output, batch) -> scalar` is a hook for losses defined elsewhere (e.g. routing alignment);
it sees the model output (logits and raw router logits) and the whole batch dict, so a batch may carry
extra arrays for it. A batch is a dict with int32 "input_ids" and "attention_mask" [B, S] and optionally a
float "loss_weight" [B, S] (weight of predicting token t; default: the attention mask).

Under a `jax.sharding` mesh, pass sharded parameters to `init_state` (the optimizer state follows their
placement) and let `batch_at` return sharded batches; the step is a plain `jax.jit`, so XLA propagates the
shardings. Only parameters accepted by `trainable(path)` are updated ("stack_0/moe/router/proj/kernel"-style
paths); the others keep their exact bits and get no optimizer state. Resuming is exact because the loop
asks `batch_at(step)` for the batch of each step, so data order depends on the step, not on history.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from moe.model import MoeOutput, MoeTransformer

Array = jax.Array
Batch = Mapping[str, Any]
ExtraLoss = Callable[[MoeOutput, Batch], Array]
Trainable = Callable[[str], bool]
StepFn = Callable[["TrainState", Batch], tuple["TrainState", dict[str, Array]]]


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any


@flax.struct.dataclass
class LossWeights:
    """w_ce, w_lb and w_z of the total loss."""

    load_balance: float = 0.01
    router_z: float = 0.0
    cross_entropy: float = 1.0


def param_path(keys: tuple) -> str:
    """"stack_0/moe/router/proj/kernel" for a jax key path."""
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def router_only(path: str) -> bool:
    """Trainable filter: only router parameters (paths containing a "router" component)."""
    return "router" in path.split("/")


def _trainable_tree(params: Any, trainable: Trainable | None) -> Any:
    return jax.tree_util.tree_map_with_path(lambda k, _: trainable is None or bool(trainable(param_path(k))), params)


def masked_optimizer(optimizer: optax.GradientTransformation, trainable: Trainable | None
                     ) -> optax.GradientTransformation:
    """`optimizer` on trainable parameters, zero updates (and no state) on the others."""
    if trainable is None:
        return optimizer
    labels = lambda params: jax.tree.map(lambda t: "train" if t else "freeze", _trainable_tree(params, trainable))
    return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0 with fresh optimizer state, placed like `params` when they are sharded. The state holds a copy
    of `params`, so the train step's buffer donation never invalidates the caller's arrays."""
    params = jax.jit(lambda p: jax.tree.map(jnp.copy, p))(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(optimizer.init)(params))


def cross_entropy(logits: Array, input_ids: Array, weight: Array) -> Array:
    """Next-token cross-entropy: position t-1 predicts token t with weight[t] (both t-1 and t must be real
    tokens under the attention mask folded into `weight`); weighted mean over targets."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    target_logp = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    w = weight[:, 1:].astype(jnp.float32)
    return -jnp.sum(target_logp * w) / jnp.maximum(jnp.sum(w), 1e-9)


def load_balancing_loss(router_logits: Array, attention_mask: Array, top_k: int) -> Array:
    """Switch-Transformer auxiliary loss, averaged over MoE layers; real tokens only.

    Per layer with E experts over the T real tokens: f_e = (number of top-k slots that pick e) / (k T), the
    fraction of assignments (no gradient), P_e = mean over tokens of softmax(raw logits)_e; loss =
    E * sum_e f_e P_e. It is 1 when routing is perfectly balanced and up to E when it collapses.
    Top-k is taken on the raw logits (the softmax-top-k choice).
    """
    logits = router_logits.astype(jnp.float32)
    num_experts = logits.shape[-1]
    real = attention_mask.astype(jnp.float32)[None, :, :, None]
    tokens = jnp.maximum(jnp.sum(real[0]), 1.0)
    _, index = jax.lax.top_k(logits, top_k)
    chosen = jnp.sum(jax.nn.one_hot(index, num_experts), axis=-2)  # [L, B, S, E]
    f = jax.lax.stop_gradient(jnp.sum(chosen * real, axis=(1, 2)) / (top_k * tokens))
    p = jnp.sum(jax.nn.softmax(logits, axis=-1) * real, axis=(1, 2)) / tokens
    return jnp.mean(num_experts * jnp.sum(f * p, axis=-1))


def router_z_loss(router_logits: Array, attention_mask: Array) -> Array:
    """ST-MoE router z-loss: mean over real tokens and MoE layers of logsumexp(raw logits)^2."""
    z = jax.nn.logsumexp(router_logits.astype(jnp.float32), axis=-1) ** 2  # [L, B, S]
    real = attention_mask.astype(jnp.float32)
    return jnp.sum(z * real[None]) / (z.shape[0] * jnp.maximum(jnp.sum(real), 1.0))


def make_train_step(model: MoeTransformer, optimizer: optax.GradientTransformation,
                    weights: LossWeights = LossWeights(), extra_loss: ExtraLoss | None = None,
                    trainable: Trainable | None = None) -> StepFn:
    """A jitted `step(state, batch) -> (state, metrics)`; `optimizer` must be the one the state was built
    with (`masked_optimizer(..., trainable)` when training only some parameters). The state is donated."""
    top_k = model.config.top_k

    def loss_fn(params: Any, batch: Batch) -> tuple[Array, dict[str, Array]]:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = model.apply({"params": params}, ids, mask)
        weight = mask * jnp.roll(mask, 1, axis=-1) * batch.get("loss_weight", 1.0)
        terms = {"cross_entropy": cross_entropy(out.logits, ids, weight),
                 "load_balance": load_balancing_loss(out.router_logits, mask, top_k),
                 "router_z": router_z_loss(out.router_logits, mask)}
        total = weights.cross_entropy * terms["cross_entropy"] + weights.load_balance * terms["load_balance"]
        total = total + weights.router_z * terms["router_z"]
        if extra_loss is not None:
            terms["extra"] = extra_loss(out, batch)
            total = total + terms["extra"]
        return total, terms | {"loss": total}

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        keep = _trainable_tree(state.params, trainable)
        params = jax.tree.map(lambda p, u, t: p + u if t else p, state.params, updates, keep)
        return TrainState(state.step + 1, params, opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def checkpoint_manager(directory: str | os.PathLike, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """An orbax CheckpointManager for train states in `directory` (created if missing)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def restore_latest(manager: ocp.CheckpointManager, like: TrainState) -> TrainState | None:
    """The latest saved state, restored with the structure, dtypes and shardings of `like`; None if none."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def fit(state: TrainState, step_fn: StepFn, batch_at: Callable[[int], Batch], num_steps: int, *,
        manager: ocp.CheckpointManager | None = None, save_every: int = 0, progress: bool = True,
        description: str = "train") -> tuple[TrainState, list[dict[str, float]]]:
    """Run `step_fn` until `state.step == num_steps`, resuming from `manager`'s latest checkpoint if any.

    `batch_at(step)` gives the batch of a step (already placed on devices, e.g. sharded, if needed).
    Saves every `save_every` steps (0: only at the end) when `manager` is given. Returns the final state
    and the metrics of the steps run in this call.
    """
    if manager is not None and (restored := restore_latest(manager, state)) is not None:
        state = restored
    start = int(state.step)
    history: list[dict[str, float]] = []
    bar = tqdm(range(start, num_steps), desc=description, disable=not progress, leave=False)
    for step in bar:
        state, metrics = step_fn(state, batch_at(step))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", refresh=False)
        done = step + 1
        if manager is not None and ((save_every and done % save_every == 0) or done == num_steps):
            manager.save(done, args=ocp.args.StandardSave(state))
    if manager is not None:
        manager.wait_until_finished()
    return state, history
