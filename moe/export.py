"""JAX parameters + ModelConfig -> an HF OLMoE checkpoint folder: the exact inverse of `moe.convert`.

- `olmoe_config(...)`: a ModelConfig that HF OLMoE expresses exactly (it is what `moe.load_config` reads back
  from the exported config.json), the one to train with when the model is to be exported.
- `hf_config(config)`: the HF config.json dict; refuses a config it cannot express exactly, naming the fields.
- `hf_tensors(config, params)`: (HF name, array) pairs with per-expert names as on the hub
  (``model.layers.{i}.mlp.experts.{e}.gate_proj.weight`` ...); `moe.convert.convert_tensors` maps them back.
- `save_hf(folder, config, params)`: config.json + model.safetensors (+ extra text files), written atomically.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors.numpy import save

from moe.atomic import atomic_folder, check_output_folder
from moe.config import ModelConfig
from moe.convert import abstract_params
from moe.families import UnsupportedConfigError, config_from_hf

WEIGHTS_FILE = "model.safetensors"
OWN_FILES = ("config.json", WEIGHTS_FILE)
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _olmoe_fields(config: ModelConfig) -> dict[str, Any]:
    """The HF OLMoE config.json fields that carry `config` (as far as OLMoE can express it)."""
    return {
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.expert_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "num_experts": config.num_experts,
        "num_experts_per_tok": config.top_k, "hidden_act": "silu", "rms_norm_eps": config.norm_eps,
        "clip_qkv": config.clip_qkv, "norm_topk_prob": config.renormalize, "attention_bias": False,
        "tie_word_embeddings": config.tie_embeddings, "max_position_embeddings": config.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
    }


def hf_config(config: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
              pad_token_id: int | None = None, dtype: str = "float32") -> dict[str, Any]:
    """The HF OLMoE config.json of `config`, which `moe.load_config` reads back as exactly `config`.

    ValueError names every field OLMoE cannot express (another family, biases, dense layers, sliding windows,
    another rope, a head_dim other than hidden_size / num_heads, ...). Token ids are written as given (None:
    no such token, rather than HF's OLMoE defaults).
    """
    if config.family != "olmoe":
        raise ValueError(f"cannot export family {config.family!r}: only olmoe configs are exported")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    raw = {**_olmoe_fields(config), "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
           "pad_token_id": pad_token_id, "dtype": dtype}
    try:
        back = config_from_hf(raw, "the exported config")
    except UnsupportedConfigError as err:
        raise ValueError(f"cannot export as HF OLMoE: {err}") from err
    wrong = [f"{f.name} = {getattr(config, f.name)!r} (OLMoE: {getattr(back, f.name)!r})"
             for f in dataclasses.fields(config) if getattr(back, f.name) != getattr(config, f.name)]
    if config.num_heads * config.head_dim != config.hidden_size:  # HF's q_norm is over hidden_size
        wrong.append(f"num_heads * head_dim = {config.num_heads * config.head_dim} != hidden_size "
                     f"{config.hidden_size}")
    if wrong:
        raise ValueError("cannot export as HF OLMoE, which has no way to express: " + "; ".join(wrong))
    return raw


def olmoe_config(*, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_experts: int,
                 top_k: int, expert_size: int, num_kv_heads: int | None = None, norm_eps: float = 1e-5,
                 rope_theta: float = 10000.0, clip_qkv: float | None = None, renormalize: bool = False,
                 tie_embeddings: bool = False, max_position_embeddings: int = 4096) -> ModelConfig:
    """An OLMoE ModelConfig (q/k norm over the projections, softmax top-k routing, SwiGLU experts, no biases)
    that `hf_config` exports exactly; head_dim is hidden_size / num_heads."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    config = ModelConfig(
        family="olmoe", vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_heads if num_kv_heads is None else num_kv_heads, head_dim=hidden_size // num_heads,
        num_experts=num_experts, top_k=top_k, expert_size=expert_size, norm_eps=norm_eps, qk_norm="projection",
        clip_qkv=clip_qkv, rope_theta=float(rope_theta), renormalize=renormalize, tie_embeddings=tie_embeddings,
        max_position_embeddings=max_position_embeddings)
    hf_config(config)  # the same checks as on export
    return config


def _flat(params: Mapping[str, Any]) -> dict[str, Any]:
    """{"stack_0/attn/q/kernel": array, ...} of a nested params dict."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def check_params(config: ModelConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """The flat params, after checking that they are exactly the model's (names and shapes); ValueError names
    what is missing, left over or misshapen."""
    flat = _flat(params)
    wanted = {path: tuple(leaf.shape) for path, leaf in abstract_params(config).items()}
    missing, extra = sorted(set(wanted) - set(flat)), sorted(set(flat) - set(wanted))
    shapes = [f"{p} {list(np.shape(flat[p]))} (wanted {list(wanted[p])})" for p in sorted(set(wanted) & set(flat))
              if tuple(np.shape(flat[p])) != wanted[p]]
    problems = ([f"missing {missing}"] if missing else []) + ([f"left over {extra}"] if extra else []) + shapes
    if problems:
        raise ValueError("params do not match the config: " + "; ".join(problems))
    return flat


def hf_tensors(config: ModelConfig, params: Mapping[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """The HF OLMoE tensors of `params` (host float arrays as stored, [out, in] for linear layers), one expert
    projection per tensor. Call `hf_config(config)` and `check_params` first."""
    flat = _flat(params)
    get = lambda path: np.asarray(flat[path])  # noqa: E731
    yield "model.embed_tokens.weight", get("embed")
    yield "model.norm.weight", get("final_norm/scale")
    if not config.tie_embeddings:
        yield "lm_head.weight", get("lm_head/kernel").T
    stack = {name: get(f"stack_0/{path}") for name, path in (
        ("input_layernorm", "input_norm/scale"), ("post_attention_layernorm", "post_norm/scale"),
        ("self_attn.q_norm", "attn/q_norm/scale"), ("self_attn.k_norm", "attn/k_norm/scale"))}
    kernels = {name: get(f"stack_0/{path}") for name, path in (
        ("self_attn.q_proj", "attn/q/kernel"), ("self_attn.k_proj", "attn/k/kernel"),
        ("self_attn.v_proj", "attn/v/kernel"), ("self_attn.o_proj", "attn/o/kernel"),
        ("mlp.gate", "moe/router/proj/kernel"))}
    gate_up, down = get("experts_0/gate_up"), get("experts_0/down")  # [L, E, D, 2, F], [L, E, F, D]
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        for name, values in stack.items():
            yield f"{prefix}{name}.weight", values[i]
        for name, values in kernels.items():
            yield f"{prefix}{name}.weight", values[i].T
        for e in range(config.num_experts):
            expert = f"{prefix}mlp.experts.{e}."
            yield f"{expert}gate_proj.weight", gate_up[i, e, :, 0].T
            yield f"{expert}up_proj.weight", gate_up[i, e, :, 1].T
            yield f"{expert}down_proj.weight", down[i, e].T


def save_hf(folder: str | Path, config: ModelConfig, params: Mapping[str, Any], *, dtype: str = "float32",
            extra_files: Mapping[str, str] | None = None, bos_token_id: int | None = None,
            eos_token_id: int | None = None, pad_token_id: int | None = None, overwrite: bool = False) -> Path:
    """Write `folder` as an HF OLMoE checkpoint: config.json (`hf_config`), model.safetensors (`hf_tensors` in
    `dtype`) and `extra_files` ({file name: text}, e.g. tokenizer files), atomically (`moe.atomic`); an
    existing folder is replaced only with `overwrite`. Everything is checked before anything is written."""
    extra_files = dict(extra_files or {})
    check_output_folder(folder, may_exist=overwrite)
    raw = hf_config(config, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                    dtype=dtype)
    bad = sorted(n for n in extra_files if n in OWN_FILES or Path(n).name != n or n.startswith("."))
    if bad:
        raise ValueError(f"extra_files {bad}: give plain, visible file names other than {list(OWN_FILES)}")
    check_params(config, params)
    tensors = {name: np.ascontiguousarray(value, DTYPES[dtype]) for name, value in hf_tensors(config, params)}
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        (tmp / WEIGHTS_FILE).write_bytes(save(tensors, metadata={"format": "pt"}))
        for name, text in extra_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(folder).absolute()
