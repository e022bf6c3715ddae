"""HF checkpoint -> parameters of MoeTransformer, streamed tensor by tensor, and the orbax format.

Every checkpoint tensor is used exactly once and every parameter is filled, or conversion fails naming
what is missing or left over. Written folders appear atomically (`moe.atomic.atomic_folder`: built in a
hidden sibling, swapped in at the end), and an output is checked before any work: never the source
checkpoint, inside it or around it.
"""
from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from moe.atomic import atomic_folder, check_output_folder
from moe.builtin import builtin_path
from moe.checkpoint_files import CheckpointError, iter_tensors, read_json
from moe.checkpoint_names import NAME_MAPS, PROJ
from moe.config import ModelConfig
from moe.expert_parallel import ExpertParallel
from moe.families import config_from_hf
from moe.model import MoeTransformer
from moe.mxfp4 import dequantize_pairs
from moe.network import offline_reason
from moe.sharding import check_axes, partition_spec

CONFIG_FILE = "moe_config.json"
PARAMS_DIR = "params"
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")


def read_hf_config(folder: Path) -> ModelConfig:
    """The ModelConfig of an HF checkpoint folder's config.json; errors name the file and the field."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not an HF checkpoint folder)")
    return config_from_hf(read_json(path, dict), str(path))


def read_converted_config(folder: Path) -> ModelConfig:
    """The ModelConfig of a folder written by `save_converted`; errors name the file and the field."""
    path = Path(folder) / CONFIG_FILE
    try:
        return ModelConfig.from_json(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err}); is the file truncated? Convert the checkpoint "
                              "again") from err
    except ValueError as err:  # unknown, missing or mistyped fields
        raise CheckpointError(f"{path}: {err}; convert the checkpoint again") from err


def read_config(folder: Path) -> ModelConfig:
    """The architecture of a converted or an HF folder, weights unread; FileNotFoundError if it is neither."""
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        return read_converted_config(folder)
    if (folder / "config.json").is_file():
        return read_hf_config(folder)
    raise FileNotFoundError(f"{folder}: not a model folder (no config.json or {CONFIG_FILE})")


def abstract_params(config: ModelConfig, dtype: Any = jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat {path: ShapeDtypeStruct} of the model's parameters, without allocating them."""
    model = MoeTransformer(config, dtype=dtype)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _placements(name: str, array: np.ndarray, rules) -> list[tuple[str, int | None, np.ndarray]]:
    """Where one checkpoint tensor goes: [(template path, expert or None, value)]; [] if no rule matches."""
    for pattern, template, transform in rules:
        m = re.fullmatch(pattern, name)
        if not m:
            continue
        groups = {k: PROJ.get(v, v) for k, v in m.groupdict().items() if v is not None}
        target = template.format(**groups, half="{half}")
        if transform == "copy":
            return [(target, None, array)]
        if transform == "linear":
            return [(target, None, array.T)]
        if transform == "expert_linear":
            return [(target, int(groups["e"]), array.T)]
        if transform == "fused_linear":
            return [(target, None, array.transpose(0, 2, 1))]
        if transform == "fused_gate_up":
            half = array.shape[1] // 2
            return [(target + "/gate", None, array[:, :half].transpose(0, 2, 1)),
                    (target + "/up", None, array[:, half:].transpose(0, 2, 1))]
        if transform == "interleaved_gate_up":
            return [(target.format(half="gate"), None, array[..., 0::2]),
                    (target.format(half="up"), None, array[..., 1::2])]
        raise AssertionError(f"unknown transform {transform}")
    return []


def _stacked(path: str, config: ModelConfig) -> tuple[str, tuple[int, ...]]:
    """A template path "layers_{i}/rest" as ("stack_{j}/rest", (i's slot in stack j,)) ("experts_{j}/rest" for
    "layers_{i}/experts/rest"); others as (path, ())."""
    m = re.fullmatch(r"layers_(\d+)/(experts/)?(.*)", path)
    for j, layers in enumerate(config.layer_stacks):
        if m and int(m[1]) in layers:
            return f"{'experts' if m[2] else 'stack'}_{j}/{m[3]}", (layers.index(int(m[1])),)
    return path, ()


# The halves of the fused expert projections: checkpoint-side name -> (parameter, index on its axis -2)
HALVES = {"gate": ("gate_up", 0), "up": ("gate_up", 1), "gate_bias": ("gate_up_bias", 0), "up_bias": ("gate_up_bias", 1)}


def _fill_targets(params: dict[str, jax.ShapeDtypeStruct]) -> dict[str, tuple[str, int | None, tuple[int, ...]]]:
    """What the checkpoint fills: {path: (parameter path, half or None, shape)}. A fused "experts_{j}/gate_up"
    is filled as its halves "experts_{j}/gate" and ".../up" (axis -2 of the parameter removed), biases alike."""
    targets = {}
    for path, leaf in params.items():
        head, _, name = path.rpartition("/")
        halves = [(part, half) for part, (fused, half) in HALVES.items() if head.startswith("experts_") and name == fused]
        for part, half in halves:
            targets[f"{head}/{part}"] = (path, half, leaf.shape[:-2] + leaf.shape[-1:])
        if not halves:
            targets[path] = (path, None, leaf.shape)
    return targets


def _where(path: str, slot: tuple[int, ...], config: ModelConfig) -> str:
    """A slot of a stacked parameter in words: "layer 5" or "layer 5, expert 3"."""
    m = re.match(r"(?:stack|experts)_(\d+)/", path)
    words = [f"layer {config.layer_stacks[int(m[1])][slot[0]]}"] if m and slot else []
    return ", ".join(words + [f"expert {e}" for e in slot[1:]])


def _missing(path: str, flags: np.ndarray | None, config: ModelConfig) -> str:
    """A parameter not (entirely) filled, with its empty slots when some were filled."""
    if flags is None:
        return path
    holes = [_where(path, tuple(int(i) for i in h), config) for h in np.argwhere(~flags)]
    return f"{path} ({'; '.join(holes[:8])}{' ...' if len(holes) > 8 else ''})"


def _shardings(targets: dict[str, jax.ShapeDtypeStruct], mesh: Mesh | None) -> dict[str, NamedSharding | None]:
    """Each parameter's sharding on `mesh` by the partition rules (None for all without a mesh)."""
    if mesh is None:
        return dict.fromkeys(targets)
    check_axes(mesh)
    return {p: NamedSharding(mesh, partition_spec(p, t.shape, mesh)) for p, t in targets.items()}


def _place(value: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    """A whole host tensor as a device array, written straight into its shards when a sharding is given."""
    if sharding is None:
        return jnp.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _empty(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding | None) -> jax.Array:
    """A zero device array that slots are written into (sharded when a sharding is given)."""
    return jnp.zeros(shape, dtype) if sharding is None else jax.jit(
        lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


@partial(jax.jit, donate_argnums=0, static_argnums=3)
def _write_slot(target: jax.Array, value: jax.Array, slot: tuple[jax.Array, ...], half: int | None) -> jax.Array:
    """target[slot] = value, or target[slot][..., half, :] = value, in place (the target buffer is donated), so
    no second copy is ever held."""
    if half is not None:
        value = jnp.expand_dims(value, -2)
    start = tuple(slot) + (0,) * (target.ndim - len(slot))
    if half is not None:
        start = start[:-2] + (half, 0)
    return jax.lax.dynamic_update_slice(target, value.reshape((1,) * len(slot) + value.shape), start)


def convert_tensors(config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], dtype: Any = jnp.float32,
                    rules=None, mesh: Mesh | None = None) -> dict[str, Any]:
    """Fill the model's parameters from (name, array) pairs; raises CheckpointError on any mismatch.

    Each parameter goes to the device (or, with `mesh`, into its shards) as soon as it is complete.
    """
    rules = NAME_MAPS[config.family] if rules is None else rules
    params = abstract_params(config, dtype)
    targets = _fill_targets(params)
    shardings = _shardings(params, mesh)
    placed: dict[str, jax.Array] = {}
    np_dtype = np.dtype(jnp.dtype(dtype))
    filled: dict[str, np.ndarray] = {}  # per-path flags over its slots (layer, or layer and expert)
    unexpected, problems = [], []
    for name, array in dequantize_pairs(tensors, np_dtype):
        if config.tie_embeddings and name == "lm_head.weight":
            continue  # a tied head is the embedding stored twice
        places = _placements(name, array, rules)
        if not places:
            unexpected.append(name)
            continue
        if array.dtype.kind in "biu":  # every parameter is a float; MXFP4's integer halves are dequantised above
            problems.append(f"{name}: stored as {array.dtype}, an integer type, for a float parameter")
            continue
        for template_path, expert, value in places:
            path, slot = _stacked(template_path, config)
            slot += () if expert is None else (expert,)
            if path not in targets:
                unexpected.append(f"{name} (-> {template_path}, which this config does not have)")
                continue
            param, half, shape = targets[path]
            where = _where(path, slot, config)
            if (tuple(value.shape) != tuple(shape[len(slot):])
                    or not all(0 <= i < n for i, n in zip(slot, shape))):
                problems.append(f"{name}: shape {tuple(value.shape)} ({where or 'whole'}) does not fit {path} {shape}")
                continue
            flags = filled.setdefault(path, np.zeros(shape[:len(slot)], bool))
            if flags.ndim != len(slot):
                problems.append(f"{name}: {path} mixes per-expert and fused tensors")
                continue
            if flags[slot].any():
                problems.append(f"{name}: {path} ({where or 'whole'}) filled twice")
                continue
            if slot or half is not None:  # stacked layers / experts / halves: fill the device array in place
                if param not in placed:
                    placed[param] = _empty(params[param].shape, np_dtype, shardings[param])
                placed[param] = _write_slot(placed[param], value.astype(np_dtype), tuple(np.int32(i) for i in slot),
                                            half)
            else:
                placed[param] = _place(np.ascontiguousarray(value, np_dtype), shardings[param])
            flags[slot] = True
    missing = [p for p in targets if p not in filled or not filled[p].all()]
    messages = []
    if problems:
        messages.append("shape/duplicate problems: " + "; ".join(problems[:20]))
    if unexpected:
        messages.append(f"{len(unexpected)} checkpoint tensor(s) left over (no parameter takes them): "
                        + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
    if missing:
        detail = [_missing(p, filled.get(p), config) for p in missing]
        messages.append(f"{len(missing)} parameter(s) not filled by the checkpoint: " + ", ".join(detail[:20])
                        + (" ..." if len(detail) > 20 else ""))
    if messages:
        raise CheckpointError("checkpoint does not match the model: " + " | ".join(messages))
    return _unflatten(placed)


def convert_hf_folder(folder: Path, dtype: Any = jnp.float32,
                      mesh: Mesh | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Read config.json and the weights of an HF checkpoint folder (sharded onto `mesh` when given)."""
    folder = Path(folder)
    config = read_hf_config(folder)
    return config, convert_tensors(config, iter_tensors(folder), dtype, mesh=mesh)


def _checkpointer():
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer()


def save_converted(out_dir: Path, config: ModelConfig, params: dict[str, Any], side_files_from: Path | None = None,
                   overwrite: bool = False) -> Path:
    """Write config + orbax params (+ tokenizer/config side files of `side_files_from`, the source folder) to
    out_dir atomically; an existing out_dir is replaced only with `overwrite` (`moe.atomic.atomic_folder`)."""
    check_output_folder(out_dir, may_exist=overwrite, source=side_files_from)
    with atomic_folder(out_dir) as tmp:
        ckpt = _checkpointer()
        ckpt.save(tmp / PARAMS_DIR, params)
        ckpt.wait_until_finished()
        (tmp / CONFIG_FILE).write_text(config.to_json())
        for name in SIDE_FILES if side_files_from else ():
            if (Path(side_files_from) / name).is_file():
                shutil.copy2(Path(side_files_from) / name, tmp / name)
    return Path(out_dir).absolute()


def convert_checkpoint(source: str | Path, out_dir: Path, dtype: Any = jnp.float32, overwrite: bool = False
                       ) -> ModelConfig:
    """scripts/convert.py: check the output folder first (not the source, inside it or around it; replaced
    only with `overwrite`), then convert the HF folder or hub id `source` and save it."""
    check_output_folder(out_dir, may_exist=overwrite)  # before a hub id is downloaded
    folder = resolve_model_path(source)
    check_output_folder(out_dir, may_exist=overwrite, source=folder)
    config, params = convert_hf_folder(folder, dtype)
    save_converted(out_dir, config, params, side_files_from=folder, overwrite=overwrite)
    return config


def load_converted(folder: Path, dtype: Any = jnp.float32,
                   mesh: Mesh | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Restore a converted folder; with `mesh`, orbax reads each parameter straight into its shards."""
    folder = Path(folder).absolute()
    config = read_converted_config(folder)
    if not (folder / PARAMS_DIR).is_dir():
        raise CheckpointError(f"{folder}: {CONFIG_FILE} without its {PARAMS_DIR}/ folder; convert the checkpoint again")
    targets = abstract_params(config, dtype)
    checkpointer = _checkpointer()
    stored = jax.tree_util.tree_flatten_with_path(checkpointer.metadata(folder / PARAMS_DIR).item_metadata)[0]
    stored = {"/".join(str(getattr(k, "key", k)) for k in path): tuple(m.shape) for path, m in stored}
    wanted = {p: tuple(t.shape) for p, t in targets.items()}
    if stored != wanted:  # e.g. a folder converted before the experts were fused and taken out of the scan
        differ = sorted(set(stored.items()) ^ set(wanted.items()))
        raise CheckpointError(f"{folder}: its parameters do not match this version's layout (first differences: "
                              + ", ".join(f"{p} {list(s)}" for p, s in differ[:4])
                              + "); convert the checkpoint again")
    shardings = _shardings(targets, mesh)
    target = _unflatten({p: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=shardings[p]) for p, t in targets.items()})
    params = checkpointer.restore(folder / PARAMS_DIR, target)
    return config, params


HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt"]


def resolve_model_path(path: str | Path) -> Path:
    """A built-in model's folder (`moe.builtin`: the string "organism"), a local model folder, or an HF hub id:
    downloaded with huggingface_hub, or taken from its local cache when the hub cannot be reached
    (`moe.network.offline_reason`, checked in seconds)."""
    builtin = builtin_path(path)
    if builtin is not None:
        return builtin
    local = Path(path)
    if local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"{path}: not a model folder (a file was given)")
        return local
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        raise FileNotFoundError(f"{path}: no such model folder")
    from huggingface_hub import constants, snapshot_download
    reason = offline_reason(constants.ENDPOINT)
    try:
        return Path(snapshot_download(str(path), allow_patterns=HUB_FILES, local_files_only=reason is not None))
    except Exception as err:  # network, hub or cache errors: say what was tried and what to do
        if reason is not None:
            raise FileNotFoundError(
                f"{path}: no such local folder, and not in the local HF hub cache; the hub cannot be reached "
                f"({reason}). Fetch it where there is a network (`hf download {path}`) and copy the cache "
                f"({constants.HF_HUB_CACHE}) here, or pass a local folder") from err
        raise FileNotFoundError(f"{path}: no such local folder, and downloading it from the HF hub failed: "
                                f"{err}") from err


def load_config(path: str | Path) -> tuple[Path, ModelConfig]:
    """The local folder and the architecture of a model (an HF or converted folder, or a hub id as in
    `from_pretrained`), weights unread; FileNotFoundError if the folder holds no model."""
    folder = resolve_model_path(path)
    return folder, read_config(folder)


def from_pretrained(path: str | Path, dtype: Any = jnp.float32, dispatch: str = "auto", mesh: Mesh | None = None):
    """Load (model, params) from an HF checkpoint folder, a folder written by scripts/convert.py, a hub id, or
    a built-in model's name ("organism": `moe.builtin`).

    With `mesh` (see `moe.sharding.make_mesh`), parameters are placed directly as sharded arrays and the
    model runs its MoE layers expert-parallel over the mesh (`dispatch` is then the per-device dispatch).
    """
    folder = resolve_model_path(path)
    if (folder / CONFIG_FILE).is_file():
        config, params = load_converted(folder, dtype, mesh)
    elif (folder / "config.json").is_file():
        config, params = convert_hf_folder(folder, dtype, mesh)
    else:
        raise FileNotFoundError(f"{folder}: not a model folder (no config.json or {CONFIG_FILE})")
    if mesh is not None:
        dispatch = ExpertParallel(mesh, dispatch)
    return MoeTransformer(config, dispatch=dispatch, dtype=dtype), params
