"""Routing edits: pure transforms of raw router logits, passed as data to the jitted forward.

The model calls ``edit(logits, moe_layer)`` on the raw router logits ``[batch, seq, experts]`` of every
MoE layer (``moe_layer`` indexes the model's MoE layers; a Python int or a traced int32 scalar).

A ``RoutingEdit`` holds float32 arrays over ``[moe_layers, experts]``, so a new strength or expert set
with the same shapes reuses the compiled forward, and ``jax.vmap`` over strengths works. Per token with
raw logits ``z`` (E experts), one edit applies, in this order:

1. soft: ``z_k <- z_k + strength[l, k] * std(z)`` for every ``k`` with non-zero strength; ``std`` is the
   population standard deviation (ddof=0) over all E logits of that token, computed in (at least) float32;
   the result saturates at the logits dtype's largest finite value (a finite strength never makes inf);
2. hard, with ``z'`` the logits after step 1 (equal to ``z`` bit for bit where nothing is soft-steered):
   forced-on experts become ``max(z') + eps``, forced-off experts ``min(z') - eps``; ``max``/``min`` are
   taken before any forcing, so several forced experts do not push each other. The forced value is
   nudged to the next representable number when rounding (e.g. in bfloat16) would make it tie, so a
   forced-on expert is strictly above every unforced one (in the top-k whenever at most k are forced on)
   and a forced-off one strictly below. Forcing overrides soft steering; forced-off wins over forced-on.

Entries that are not selected are never touched by arithmetic (selection is by ``jnp.where``), so an
empty edit returns its input bit-identical, ``-0.0`` and non-finite values included.

The offset is ``eps + eps_std * n`` with ``n ~ N(0, 1)`` drawn for every (token, expert) from the edit's
``key``, folded with the MoE layer and a hash of the token's raw logits: a token gets the same draw
wherever it sits in a batch (padding and batch neighbours do not change it) and, during generation,
each new token gets its own. ``eps`` defaults to 0.01, the fixed offset of SteerMoE (``eps_std`` 0: no
draw); the paper's random offset, eps ~ N(0, 1e-6), is ``eps=0, eps_std=1e-6`` (``PAPER_EPS``). Either
way the result is strictly above (below) every unforced expert, by the nudge above. The key and both
offsets are arrays, so switching between them never recompiles. No log-softmax is applied first (that
is not neutral for shift-sensitive routing rules such as Phi-3.5-MoE's sparsemixer).

Strengths and offsets must be finite in float32 (``1e39`` is not: it becomes inf, and inf x 0 gives NaN
logits); the constructors raise ValueError otherwise, for Python numbers and concrete arrays alike (traced
values, e.g. under ``jax.vmap``, cannot be checked). Every edit declares ``num_moe_layers``; the model
refuses an edit built for another number of MoE layers.

The constructors (``empty``, ``soft``, ``force_on``, ``force_off``, ``selection_mask``) take the model's shape
as ``num_moe_layers, num_experts`` or as one ``ModelConfig`` or model in their place:
``soft(model.config, {8: [3, 17]}, lam=0.5)``. Layers may be given as a ``routing.window.Window``.
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable, Iterable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from routing.window import Window, layer_list

DEFAULT_EPS = 0.01
PAPER_EPS = {"eps": 0.0, "eps_std": 1e-6}  # eps ~ N(0, 1e-6) per token and expert

Selection = Union[Iterable[tuple[int, int]], Mapping[int, Iterable[int]]]
LogitFn = Callable[[jax.Array, Any], jax.Array]


def finite_float32(value: Any, what: str) -> jax.Array:
    """``value`` as a float32 array; ValueError naming ``what`` if a concrete entry is not finite in float32."""
    with np.errstate(over="ignore"):
        array = jnp.asarray(value, jnp.float32)
    if not isinstance(array, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(array))):
        shown = (f"{float(np.asarray(value))!r}" if np.ndim(value) == 0
                 else f"an array with {int(jnp.sum(~jnp.isfinite(array)))} non-finite entries")
        raise ValueError(f"{what} must be finite in float32 (|x| <= 3.4e38, not NaN), got {shown}")
    return array


def _layer_row(table: jax.Array, moe_layer: Any) -> jax.Array:
    """Row ``moe_layer`` of a [layers, experts] table; Python ints are range-checked."""
    if isinstance(moe_layer, (int, np.integer)):
        if not 0 <= moe_layer < table.shape[0]:
            raise ValueError(f"moe_layer {moe_layer} out of range [0, {table.shape[0]})")
    return jnp.asarray(table)[moe_layer]


def _hash_multipliers(num_experts: int) -> np.ndarray:
    """Distinct odd uint32 multipliers, one per expert, for the token hash."""
    return np.array([((2 * i + 1) * 0x9E3779B1) % 2**32 | 1 for i in range(num_experts)], np.uint32)


def token_normals(key: jax.Array, moe_layer: Any, logits: jax.Array) -> jax.Array:
    """Standard normals [..., experts] float32, one per token and expert, from ``key``, the layer and a hash
    of each token's logits (its float32 bit pattern): equal logits give equal draws wherever they sit."""
    bits = jax.lax.bitcast_convert_type(logits.astype(jnp.float32), jnp.uint32)
    token_hash = jnp.sum(bits * _hash_multipliers(logits.shape[-1]), axis=-1, dtype=jnp.uint32)
    layer_key = jax.random.fold_in(jnp.asarray(key, jnp.uint32), moe_layer)
    draw = jax.vmap(lambda h: jax.random.normal(jax.random.fold_in(layer_key, h), (logits.shape[-1],)))
    return draw(token_hash.reshape(-1)).reshape(logits.shape)


@struct.dataclass
class RoutingEdit:
    """Soft strengths and force-on/off masks over [moe_layers, experts] (see module docstring).

    Masks are 0/1 float32 (bool arrays work too: any non-zero entry counts as selected).
    """

    strength: jax.Array
    force_on: jax.Array
    force_off: jax.Array
    eps: jax.Array
    eps_std: jax.Array
    key: jax.Array  # uint32[2], raw PRNG key data

    @property
    def num_moe_layers(self) -> int:
        return self.strength.shape[0]

    @property
    def num_experts(self) -> int:
        return self.strength.shape[1]

    def __call__(self, logits: jax.Array, moe_layer: Any) -> jax.Array:
        """Apply the edit of layer ``moe_layer`` to ``logits`` [..., experts]; same shape and dtype.

        A Python int layer is range-checked; a traced one is indexed dynamically (JAX clamps it).
        """
        if logits.shape[-1] != self.num_experts:
            raise ValueError(f"logits have {logits.shape[-1]} experts, the edit has {self.num_experts}")
        dtype = logits.dtype
        compute = jnp.promote_types(dtype, jnp.float32)
        strength = _layer_row(self.strength, moe_layer).astype(compute)
        on = _layer_row(self.force_on, moe_layer) != 0
        off = _layer_row(self.force_off, moe_layer) != 0
        eps = jnp.asarray(self.eps, compute)

        z32 = logits.astype(compute)
        std = jnp.std(z32, axis=-1, keepdims=True)
        largest = jnp.finfo(dtype).max  # a huge finite strength saturates instead of overflowing to inf (NaN later)
        soft = jnp.clip(z32 + strength * std, -largest, largest).astype(dtype)
        z = jnp.where(strength != 0, soft, logits)

        eps_std = jnp.asarray(self.eps_std, compute)
        offset = eps + eps_std * jax.lax.cond(eps_std > 0, lambda: token_normals(self.key, moe_layer, logits),
                                              lambda: jnp.zeros(logits.shape, jnp.float32)).astype(compute)
        hi = jnp.max(z, axis=-1, keepdims=True)
        lo = jnp.min(z, axis=-1, keepdims=True)
        up = jnp.maximum((hi.astype(compute) + offset).astype(dtype), jnp.nextafter(hi, jnp.asarray(jnp.inf, dtype)))
        down = jnp.minimum((lo.astype(compute) - offset).astype(dtype),
                           jnp.nextafter(lo, jnp.asarray(-jnp.inf, dtype)))
        z = jnp.where(on, up, z)
        return jnp.where(off, down, z)

    def __add__(self, other: RoutingEdit) -> RoutingEdit:
        return compose(self, other)


@struct.dataclass
class LogitFunction:
    """Extension point: an arbitrary ``fn(logits, moe_layer) -> logits`` as a pytree.

    ``fn`` is a static field: jit caches on its identity, so reusing one function object never
    recompiles, while a new function (e.g. a fresh lambda) compiles once more.
    """

    fn: LogitFn = struct.field(pytree_node=False)

    def __call__(self, logits: jax.Array, moe_layer: Any) -> jax.Array:
        out = self.fn(logits, moe_layer)
        if out.shape != logits.shape or out.dtype != logits.dtype:
            raise ValueError(
                f"{self.fn!r} returned {out.dtype}{list(out.shape)}, expected {logits.dtype}{list(logits.shape)}"
            )
        return out


@struct.dataclass
class ChainedEdit:
    """Edits applied one after another, in order (each sees the previous one's output)."""

    edits: tuple

    @property
    def num_moe_layers(self) -> int | None:
        """The MoE-layer count its RoutingEdits were built for (None when it holds none); ValueError if they
        disagree."""
        counts = sorted({edit.num_moe_layers for edit in self.edits if isinstance(edit, RoutingEdit)})
        if len(counts) > 1:
            raise ValueError(f"chained edits were built for different numbers of MoE layers: {counts}")
        return counts[0] if counts else None

    def __call__(self, logits: jax.Array, moe_layer: Any) -> jax.Array:
        for edit in self.edits:
            logits = edit(logits, moe_layer)
        return logits


Edit = Union[RoutingEdit, LogitFunction, ChainedEdit]


def _index(value: Any, what: str, size: int) -> int:
    try:
        i = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not 0 <= i < size:
        raise ValueError(f"{what} {value!r} out of range [0, {size})")
    return i


def _check_sizes(num_moe_layers: int, num_experts: int) -> None:
    for name, n in (("num_moe_layers", num_moe_layers), ("num_experts", num_experts)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name} must be a positive integer, got {n!r}")


def _check_eps(eps: Any, eps_std: Any) -> None:
    numbers = (int, float, np.number)
    for name, value in (("eps", eps), ("eps_std", eps_std)):
        if isinstance(value, numbers) and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    if isinstance(eps, numbers) and isinstance(eps_std, numbers) and eps == eps_std == 0:
        raise ValueError("eps and eps_std are both 0: give a fixed offset (eps > 0) or a random one (eps_std > 0)")


def _key_data(key: int | jax.Array) -> jax.Array:
    """Raw uint32[2] key data from a seed or a PRNG key (raw or typed)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if key.shape != (2,):
        raise ValueError(f"key must be a seed or a PRNG key (raw uint32[2] or typed), got shape {key.shape}")
    return jnp.asarray(key, jnp.uint32)


def _layer_mask(layers: Window | Iterable[int], num_moe_layers: int) -> np.ndarray:
    mask = np.zeros(num_moe_layers, bool)
    for layer in layer_list(layers):
        mask[_index(layer, "layer", num_moe_layers)] = True
    return mask


def _model_shape(constructor: Callable) -> Callable:
    """Let ``constructor(num_moe_layers, num_experts, ...)`` also be called as ``constructor(shape, ...)`` with a
    ModelConfig, or a model (anything with a ``config``), as ``shape``."""

    @functools.wraps(constructor)
    def build(first: Any, *args: Any, **kwargs: Any) -> Any:
        config = getattr(first, "config", first)
        if hasattr(config, "num_moe_layers") and hasattr(config, "num_experts"):
            return constructor(config.num_moe_layers, config.num_experts, *args, **kwargs)
        return constructor(first, *args, **kwargs)

    return build


@_model_shape
def selection_mask(
    num_moe_layers: int, num_experts: int, selection: Selection, layers: Window | Iterable[int] | None = None
) -> np.ndarray:
    """0/1 float32 mask [moe_layers, experts] of ``selection`` (pairs or ``{layer: experts}``).

    ``layers`` keeps only selected experts inside that layer window. Raises ValueError naming the bad value
    for out-of-range layers or experts, and for a selection that is (or, after the window, becomes) empty.
    """
    _check_sizes(num_moe_layers, num_experts)
    pairs = (
        [(layer, e) for layer, experts in selection.items() for e in experts]
        if isinstance(selection, Mapping)
        else list(selection)
    )
    mask = np.zeros((num_moe_layers, num_experts), np.float32)
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"selection entries must be (moe_layer, expert) pairs, got {pair!r}")
        mask[_index(pair[0], "layer", num_moe_layers), _index(pair[1], "expert", num_experts)] = 1.0
    if not mask.any():
        raise ValueError("empty selection: give at least one (moe_layer, expert) pair")
    if layers is not None:
        inside = _layer_mask(layers, num_moe_layers)
        mask[~inside] = 0.0
        if not mask.any():
            raise ValueError(f"no selected expert lies in layers {sorted(np.flatnonzero(inside).tolist())}")
    return mask


def _edit(strength: Any, on: Any, off: Any, eps: Any, eps_std: Any = 0.0, key: int | jax.Array = 0) -> RoutingEdit:
    _check_eps(eps, eps_std)
    return RoutingEdit(
        strength=finite_float32(strength, "steering strength"),
        force_on=jnp.asarray(on, jnp.float32),
        force_off=jnp.asarray(off, jnp.float32),
        eps=finite_float32(eps, "eps"),
        eps_std=finite_float32(eps_std, "eps_std"),
        key=_key_data(key),
    )


@_model_shape
def empty(num_moe_layers: int, num_experts: int, eps: float = DEFAULT_EPS) -> RoutingEdit:
    """The neutral edit (returns logits bit-identical)."""
    _check_sizes(num_moe_layers, num_experts)
    zeros = np.zeros((num_moe_layers, num_experts), np.float32)
    return _edit(zeros, zeros, zeros, eps)


@_model_shape
def soft(num_moe_layers: int, num_experts: int, selection: Selection, lam: float | jax.Array,
         layers: Window | Iterable[int] | None = None, eps: float = DEFAULT_EPS) -> RoutingEdit:
    """Soft steering ``z_k += lam * std(z)`` of the selected experts (lam < 0 demotes).

    ``lam`` may be a (traced) scalar array, so ``jax.vmap`` over it works; the strength is
    ``lam * selection_mask``.
    """
    lam = finite_float32(lam, "lam")
    mask = selection_mask(num_moe_layers, num_experts, selection, layers)
    zeros = np.zeros_like(mask)
    return _edit(lam * mask, zeros, zeros, eps)


@_model_shape
def force_on(num_moe_layers: int, num_experts: int, selection: Selection, layers: Window | Iterable[int] | None = None,
             eps: float = DEFAULT_EPS, eps_std: float = 0.0, key: int | jax.Array = 0) -> RoutingEdit:
    """Hard steering: selected experts get ``max(z) + eps + eps_std * n``, n ~ N(0, 1) per token and expert
    drawn from ``key`` (a seed or a PRNG key); see the module docstring."""
    mask = selection_mask(num_moe_layers, num_experts, selection, layers)
    return _edit(np.zeros_like(mask), mask, np.zeros_like(mask), eps, eps_std, key)


@_model_shape
def force_off(num_moe_layers: int, num_experts: int, selection: Selection, layers: Window | Iterable[int] | None = None,
              eps: float = DEFAULT_EPS, eps_std: float = 0.0, key: int | jax.Array = 0) -> RoutingEdit:
    """Hard deactivation: selected experts get ``min(z) - (eps + eps_std * n)`` (as in ``force_on``)."""
    mask = selection_mask(num_moe_layers, num_experts, selection, layers)
    return _edit(np.zeros_like(mask), np.zeros_like(mask), mask, eps, eps_std, key)


def window(edit: RoutingEdit, layers: Window | Iterable[int]) -> RoutingEdit:
    """``edit`` restricted to the MoE layers in ``layers`` (a window or layers; the result may be empty)."""
    keep = jnp.asarray(_layer_mask(layers, edit.num_moe_layers))[:, None]
    return edit.replace(
        strength=jnp.where(keep, edit.strength, jnp.zeros_like(edit.strength)),
        force_on=jnp.where(keep, edit.force_on, jnp.zeros_like(edit.force_on)),
        force_off=jnp.where(keep, edit.force_off, jnp.zeros_like(edit.force_off)),
    )


def with_strength(edit: RoutingEdit, lam: float | jax.Array) -> RoutingEdit:
    """``edit`` with every soft-steered entry (non-zero strength) set to ``lam``: ``lam * mask``.

    Use with ``jax.vmap`` over ``lam``; masks and eps are kept.
    """
    mask = (edit.strength != 0).astype(jnp.float32)
    return edit.replace(strength=finite_float32(lam, "lam") * mask)


def compose(a: RoutingEdit, b: RoutingEdit) -> RoutingEdit:
    """Merge two edits into one simultaneous edit (also ``a + b``); commutative.

    Strengths add, force masks are OR-ed, eps and eps_std are the larger ones, the key is that of the edit
    with the larger eps_std (on a tie, the elementwise max of both keys). All soft terms use the std of
    the unedited logits, which differs from applying ``a`` then ``b`` (use ``chain`` for that).
    """
    if not (isinstance(a, RoutingEdit) and isinstance(b, RoutingEdit)):
        raise TypeError(f"compose merges RoutingEdits; use chain() for {type(a).__name__}, {type(b).__name__}")
    if a.strength.shape != b.strength.shape:
        raise ValueError(f"edit shapes differ: {a.strength.shape} vs {b.strength.shape}")

    def union(x: jax.Array, y: jax.Array) -> jax.Array:
        return ((x != 0) | (y != 0)).astype(jnp.float32)

    key = jnp.where(a.eps_std > b.eps_std, a.key, jnp.where(b.eps_std > a.eps_std, b.key, jnp.maximum(a.key, b.key)))
    return _edit(a.strength + b.strength, union(a.force_on, b.force_on), union(a.force_off, b.force_off),
                 jnp.maximum(a.eps, b.eps), jnp.maximum(a.eps_std, b.eps_std), key)


def chain(*edits: Edit | LogitFn) -> ChainedEdit:
    """Apply ``edits`` in sequence; plain callables are wrapped in ``LogitFunction``; chains flatten.

    Its RoutingEdits must share one number of MoE layers (ValueError otherwise)."""
    if not edits:
        raise ValueError("chain needs at least one edit")
    flat: list = []
    for edit in edits:
        if isinstance(edit, ChainedEdit):
            flat.extend(edit.edits)
        elif isinstance(edit, (RoutingEdit, LogitFunction)):
            flat.append(edit)
        elif callable(edit):
            flat.append(LogitFunction(edit))
        else:
            raise TypeError(f"not an edit or callable: {edit!r}")
    chained = ChainedEdit(tuple(flat))
    chained.num_moe_layers  # raises ValueError if its RoutingEdits disagree
    return chained
