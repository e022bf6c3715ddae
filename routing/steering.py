"""Routing edits: pure transforms of raw router logits, passed as data to the jitted forward.

The model calls ``edit(logits, moe_layer)`` on the raw router logits ``[batch, seq, experts]`` of every
MoE layer (``moe_layer`` indexes the model's MoE layers; a Python int or a traced int32 scalar).

A ``RoutingEdit`` holds float32 arrays over ``[moe_layers, experts]``, so a new strength or expert set
with the same shapes reuses the compiled forward, and ``jax.vmap`` over strengths works. Per token with
raw logits ``z`` (E experts), one edit applies, in this order:

1. soft: ``z_k <- z_k + strength[l, k] * std(z)`` for every ``k`` with non-zero strength; ``std`` is the
   population standard deviation (ddof=0) over all E logits of that token, computed in (at least) float32;
2. hard, with ``z'`` the logits after step 1 (equal to ``z`` bit for bit where nothing is soft-steered):
   forced-on experts become ``max(z') + eps``, forced-off experts ``min(z') - eps``; ``max``/``min`` are
   taken before any forcing, so several forced experts do not push each other. The forced value is
   nudged to the next representable number when rounding (e.g. in bfloat16) would make it tie, so a
   forced-on expert is strictly above every unforced one (in the top-k whenever at most k are forced on)
   and a forced-off one strictly below. Forcing overrides soft steering; forced-off wins over forced-on.

Entries that are not selected are never touched by arithmetic (selection is by ``jnp.where``), so an
empty edit returns its input bit-identical, ``-0.0`` and non-finite values included.
``eps`` defaults to 0.01, the fixed offset of SteerMoE. No log-softmax is applied first (that is not
neutral for shift-sensitive routing rules such as Phi-3.5-MoE's sparsemixer).

Strengths and ``eps`` must be finite in float32 (``1e39`` is not: it becomes inf, and inf x 0 gives NaN
logits); the constructors raise ValueError otherwise, for Python numbers and concrete arrays alike (traced
values, e.g. under ``jax.vmap``, cannot be checked). Every edit declares ``num_moe_layers``; the model
refuses an edit built for another number of MoE layers.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable, Iterable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

DEFAULT_EPS = 0.01

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


@struct.dataclass
class RoutingEdit:
    """Soft strengths and force-on/off masks over [moe_layers, experts] (see module docstring).

    Masks are 0/1 float32 (bool arrays work too: any non-zero entry counts as selected).
    """

    strength: jax.Array
    force_on: jax.Array
    force_off: jax.Array
    eps: jax.Array

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
        soft = (z32 + strength * std).astype(dtype)
        z = jnp.where(strength != 0, soft, logits)

        hi = jnp.max(z, axis=-1, keepdims=True)
        lo = jnp.min(z, axis=-1, keepdims=True)
        up = jnp.maximum((hi.astype(compute) + eps).astype(dtype), jnp.nextafter(hi, jnp.asarray(jnp.inf, dtype)))
        down = jnp.minimum((lo.astype(compute) - eps).astype(dtype), jnp.nextafter(lo, jnp.asarray(-jnp.inf, dtype)))
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


def _check_eps(eps: Any) -> None:
    if isinstance(eps, (int, float, np.number)) and not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and > 0, got {eps!r}")


def _layer_mask(layers: Iterable[int], num_moe_layers: int) -> np.ndarray:
    mask = np.zeros(num_moe_layers, bool)
    for layer in layers:
        mask[_index(layer, "layer", num_moe_layers)] = True
    return mask


def selection_mask(
    num_moe_layers: int, num_experts: int, selection: Selection, layers: Iterable[int] | None = None
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
        window = _layer_mask(layers, num_moe_layers)
        mask[~window] = 0.0
        if not mask.any():
            raise ValueError(f"no selected expert lies in layers {sorted(np.flatnonzero(window).tolist())}")
    return mask


def _edit(strength: Any, on: Any, off: Any, eps: Any) -> RoutingEdit:
    _check_eps(eps)
    return RoutingEdit(
        strength=finite_float32(strength, "steering strength"),
        force_on=jnp.asarray(on, jnp.float32),
        force_off=jnp.asarray(off, jnp.float32),
        eps=finite_float32(eps, "eps"),
    )


def empty(num_moe_layers: int, num_experts: int, eps: float = DEFAULT_EPS) -> RoutingEdit:
    """The neutral edit (returns logits bit-identical)."""
    _check_sizes(num_moe_layers, num_experts)
    zeros = np.zeros((num_moe_layers, num_experts), np.float32)
    return _edit(zeros, zeros, zeros, eps)


def soft(
    num_moe_layers: int,
    num_experts: int,
    selection: Selection,
    lam: float | jax.Array,
    layers: Iterable[int] | None = None,
    eps: float = DEFAULT_EPS,
) -> RoutingEdit:
    """Soft steering ``z_k += lam * std(z)`` of the selected experts (lam < 0 demotes).

    ``lam`` may be a (traced) scalar array, so ``jax.vmap`` over it works; the strength is
    ``lam * selection_mask``.
    """
    lam = finite_float32(lam, "lam")
    mask = selection_mask(num_moe_layers, num_experts, selection, layers)
    zeros = np.zeros_like(mask)
    return _edit(lam * mask, zeros, zeros, eps)


def force_on(
    num_moe_layers: int,
    num_experts: int,
    selection: Selection,
    layers: Iterable[int] | None = None,
    eps: float = DEFAULT_EPS,
) -> RoutingEdit:
    """Hard steering: selected experts get ``max(z) + eps``."""
    mask = selection_mask(num_moe_layers, num_experts, selection, layers)
    zeros = np.zeros_like(mask)
    return _edit(zeros, mask, zeros, eps)


def force_off(
    num_moe_layers: int,
    num_experts: int,
    selection: Selection,
    layers: Iterable[int] | None = None,
    eps: float = DEFAULT_EPS,
) -> RoutingEdit:
    """Hard deactivation: selected experts get ``min(z) - eps``."""
    mask = selection_mask(num_moe_layers, num_experts, selection, layers)
    zeros = np.zeros_like(mask)
    return _edit(zeros, zeros, mask, eps)


def window(edit: RoutingEdit, layers: Iterable[int]) -> RoutingEdit:
    """``edit`` restricted to the MoE layers in ``layers`` (the result may be empty)."""
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

    Strengths add, force masks are OR-ed, eps is the larger one. All soft terms use the std of the
    unedited logits, which differs from applying ``a`` then ``b`` (use ``chain`` for that).
    """
    if not (isinstance(a, RoutingEdit) and isinstance(b, RoutingEdit)):
        raise TypeError(f"compose merges RoutingEdits; use chain() for {type(a).__name__}, {type(b).__name__}")
    if a.strength.shape != b.strength.shape:
        raise ValueError(f"edit shapes differ: {a.strength.shape} vs {b.strength.shape}")

    def union(x: jax.Array, y: jax.Array) -> jax.Array:
        return ((x != 0) | (y != 0)).astype(jnp.float32)

    return _edit(a.strength + b.strength, union(a.force_on, b.force_on), union(a.force_off, b.force_off),
                 jnp.maximum(a.eps, b.eps))


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
