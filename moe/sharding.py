"""Device meshes and partition rules: how parameters and activations lie over ("data", "expert", "model").

- "data": batches are split over it (and over "expert": outside the MoE FFN the expert axis is one more
  data axis, so every device holds distinct tokens).
- "expert": routed experts are split over it; `moe.expert_parallel` exchanges tokens between its shards.
- "model": large parameters are split over it (attention and dense-MLP kernels, embeddings, the LM head,
  the experts' hidden dimension); activations are replicated over it and XLA partitions the matmuls.

A dimension is split over "model" only when the axis size divides it; otherwise it is replicated. The
expert axis must divide the number of experts (otherwise a ValueError names both sizes).
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from moe.config import ModelConfig
from moe.model import MoeTransformer

AXES = ("data", "expert", "model")
BATCH_AXES = ("data", "expert")

# How the routed experts' parameters (moe.model.ExpertStack, per layer) lie over the mesh: gate_up [E, D, 2, F]
# has its hidden dimension F split over "model", so every device holds matching gate and up columns.
EXPERT_RULES: dict[str, tuple[str | None, ...]] = {
    "gate_up": ("expert", None, None, "model"), "down": ("expert", "model", None),
    "gate_up_bias": ("expert", None, "model"), "down_bias": ("expert", None),
}

# (regex over the parameter path, one entry per dimension: a mesh axis or None). First match wins;
# parameters that match no rule (norms, routers, output-projection biases, sinks) are replicated.
PARTITION_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    *((rf"experts_\d+/{name}", axes) for name, axes in EXPERT_RULES.items()),
    (r".*/(q|k|v|gate|up)/kernel", (None, "model")),
    (r".*/(q|k|v|gate|up)/bias", ("model",)),
    (r".*/(o|down)/kernel", ("model", None)),
    (r"embed", (None, "model")),
    (r"lm_head/kernel", (None, "model")),
    (r"lm_head/bias", ("model",)),
)


def make_mesh(data: int | None = None, expert: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes ("data", "expert", "model") over `devices` (default: all devices of all hosts).

    `data=None` takes whatever devices `expert` x `model` leave. Raises ValueError naming the sizes when
    they do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data is None:
        if expert < 1 or model < 1 or n % (expert * model):
            raise ValueError(f"mesh expert={expert} x model={model} does not divide the {n} devices")
        data = n // (expert * model)
    sizes = (data, expert, model)
    if min(sizes) < 1 or math.prod(sizes) != n:
        raise ValueError(f"mesh data={data} x expert={expert} x model={model} = {math.prod(sizes)} devices, "
                         f"but there are {n} devices")
    return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def check_axes(mesh: Mesh) -> None:
    """Raise ValueError unless `mesh` has exactly the axes ("data", "expert", "model")."""
    if set(mesh.axis_names) != set(AXES):
        raise ValueError(f"mesh axes {mesh.axis_names} must be {AXES}; build the mesh with moe.sharding.make_mesh")


def _fit(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    """Axes as a PartitionSpec, with "model" dropped from dimensions it does not divide.

    Raises ValueError when the expert axis does not divide the number of experts.
    """
    if "expert" in axes and shape[axes.index("expert")] % mesh.shape["expert"]:
        raise ValueError(f"mesh expert axis size {mesh.shape['expert']} does not divide the number of experts "
                         f"{shape[axes.index('expert')]}")
    return P(*(None if a == "model" and dim % mesh.shape["model"] else a for a, dim in zip(axes, shape)))


def partition_spec(path: str, shape: Sequence[int], mesh: Mesh) -> P:
    """The PartitionSpec of the parameter at `path` (e.g. "experts_0/gate_up") with this shape.

    Parameters of a layer stack ("stack_{j}/..." and its experts "experts_{j}/...") have a leading layer axis,
    replicated (None); the rules apply to the dimensions after it. Parameters that match no rule are
    replicated (P()).
    """
    check_axes(mesh)
    layer_axes = (None,) if re.match(r"(stack|experts)_\d+/", path) else ()
    shape = shape[len(layer_axes):]
    for pattern, axes in PARTITION_RULES:
        if re.fullmatch(pattern, path) and len(axes) == len(shape):
            return P(*layer_axes, *_fit(axes, shape, mesh))
    return P()


def expert_spec(name: str, shape: Sequence[int], mesh: Mesh) -> P:
    """The PartitionSpec of the routed-expert parameter `name` ("gate_up", "down_bias", ...) of this shape: one
    layer's, or a stack's with a leading layer axis (replicated)."""
    check_axes(mesh)
    rule = EXPERT_RULES[name]
    lead = len(shape) - len(rule)
    return P(*(None,) * lead, *_fit(rule, shape[lead:], mesh))


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in keys)


def _specs(params: Any, mesh: Mesh) -> Any:
    return jax.tree_util.tree_map_with_path(lambda k, leaf: partition_spec(_path(k), leaf.shape, mesh), params)


def param_shardings(config: ModelConfig, mesh: Mesh, dtype: Any = jnp.float32) -> dict[str, Any]:
    """NamedShardings in the shape of the model's parameter tree."""
    model = MoeTransformer(config, dtype=dtype)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), _specs(shapes, mesh))


def shard_params(params: Any, mesh: Mesh) -> Any:
    """Place an existing parameter tree onto `mesh` by the partition rules."""
    return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), params, _specs(params, mesh))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] activation (input ids, masks, logits): batch over data x expert."""
    return NamedSharding(mesh, P(BATCH_AXES, *(None,) * (ndim - 1)))


def shard_batch(array: Any, mesh: Mesh) -> jax.Array:
    """Put a host [batch, ...] array onto `mesh`; the batch must be divisible by data x expert devices."""
    array = np.asarray(array)
    parts = mesh.shape["data"] * mesh.shape["expert"]
    if array.shape[0] % parts:
        raise ValueError(f"batch size {array.shape[0]} is not divisible by data x expert = {parts}")
    return jax.device_put(array, batch_sharding(mesh, array.ndim))
