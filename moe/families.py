"""HF `config.json` -> ModelConfig, one small function per family, with an allow-list of fields.

A field that a family's function does not read, and that is not harmless metadata, is rejected: silently
dropping a feature flag would give a model that loads but computes something else.
"""
from __future__ import annotations

from typing import Any, Callable

from moe.config import ModelConfig

# Fields that never change what the forward pass computes at inference.
METADATA_FIELDS = frozenset({
    "architectures", "auto_map", "bos_token_id", "eos_token_id", "pad_token_id", "dtype", "torch_dtype",
    "transformers_version", "use_cache", "initializer_range", "output_router_logits", "router_aux_loss_coef",
    "attention_dropout", "router_jitter_noise", "_name_or_path", "model_type", "return_dict", "output_attentions",
    "output_hidden_states", "generation_config", "chunk_size_feed_forward", "id2label", "label2id",
    "problem_type", "tokenizer_class", "quantization_config", "_attn_implementation_autoset", "hidden_dropout",
    "embd_pdrop", "resid_pdrop", "attention_probs_dropout_prob", "router_z_loss_coef", "max_window_layers",
})


class UnsupportedConfigError(ValueError):
    """A config.json asks for something this library does not implement."""


class ConfigReader:
    """Reads fields of an HF config dict and remembers which ones were looked at."""

    def __init__(self, raw: dict[str, Any], source: str = "config.json"):
        self.raw = dict(raw)
        self.source = source
        self.seen: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        value = self.raw.get(key, default)
        return default if value is None and default is not None else value

    def require(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            raise UnsupportedConfigError(f"{self.source}: required field {key!r} is missing")
        return self.raw[key]

    def require_any(self, *keys: str) -> Any:
        """The first of several alias names that is present (HF renamed some fields across versions)."""
        self.seen.update(keys)
        for key in keys:
            if self.raw.get(key) is not None:
                return self.raw[key]
        raise UnsupportedConfigError(f"{self.source}: required field {keys[0]!r} is missing")

    def expect(self, key: str, allowed: tuple[Any, ...], default: Any = None) -> Any:
        value = self.get(key, default)
        if value not in allowed:
            raise UnsupportedConfigError(
                f"{self.source}: field {key!r} = {value!r} is not supported (supported: {list(allowed)})")
        return value

    def check_all_read(self) -> None:
        left = sorted(set(self.raw) - self.seen - METADATA_FIELDS)
        if left:
            raise UnsupportedConfigError(
                f"{self.source}: unsupported config field(s) {left} for model_type {self.raw.get('model_type')!r}; "
                "they would change the model and are not implemented")


def _rope(r: ConfigReader) -> dict[str, Any]:
    """Rope settings from either the v5 `rope_parameters` dict or the older `rope_theta`/`rope_scaling` fields."""
    params = dict(r.get("rope_parameters") or {})
    scaling = r.get("rope_scaling")
    if scaling:
        params.update(scaling)
    theta = params.pop("rope_theta", None) or r.get("rope_theta", 10000.0)
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    supported = {"default": set(), "linear": {"factor"}}
    if kind not in supported:
        raise UnsupportedConfigError(f"{r.source}: rope scaling type {kind!r} is not supported "
                                     f"(supported: {sorted(supported)})")
    extra = sorted(set(params) - supported[kind])
    if extra:
        raise UnsupportedConfigError(f"{r.source}: rope field(s) {extra} are not supported for rope type {kind!r}")
    r.get("partial_rotary_factor", 1.0)
    return dict(rope_theta=float(theta), rope_kind=kind, rope_params=tuple(params.items()),
                partial_rotary_factor=float(r.raw.get("partial_rotary_factor") or 1.0))


def _common(r: ConfigReader, **overrides: Any) -> dict[str, Any]:
    hidden, heads = r.require("hidden_size"), r.require("num_attention_heads")
    r.expect("hidden_act", ("silu",), "silu")
    fields = dict(
        vocab_size=r.require("vocab_size"), hidden_size=hidden, num_layers=r.require("num_hidden_layers"),
        num_heads=heads, num_kv_heads=r.get("num_key_value_heads", heads),
        head_dim=r.get("head_dim", hidden // heads), norm_eps=r.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(r.get("tie_word_embeddings", False)),
        max_position_embeddings=r.get("max_position_embeddings", 4096), **_rope(r))
    fields.update(overrides)
    return fields


def _sparse_step_flags(r: ConfigReader, num_layers: int) -> tuple[bool, ...]:
    """Qwen's rule: layer i is MoE unless listed in mlp_only_layers, and only every decoder_sparse_step-th."""
    step = r.get("decoder_sparse_step", 1)
    mlp_only = set(r.get("mlp_only_layers", []) or [])
    bad = sorted(i for i in mlp_only if not 0 <= i < num_layers)
    if bad:
        raise UnsupportedConfigError(f"{r.source}: mlp_only_layers {bad} outside [0, {num_layers})")
    experts = r.require_any("num_experts", "num_local_experts")
    return tuple(i not in mlp_only and experts > 0 and (i + 1) % step == 0 for i in range(num_layers))


def olmoe(r: ConfigReader) -> ModelConfig:
    bias = r.expect("attention_bias", (False,), False)
    return ModelConfig(family="olmoe", **_common(
        r, num_experts=r.require_any("num_experts", "num_local_experts"), top_k=r.require("num_experts_per_tok"),
        expert_size=r.require("intermediate_size"), qk_norm="projection", clip_qkv=r.get("clip_qkv"),
        qkv_bias=bias, o_bias=bias, routing_rule="softmax_topk", renormalize=bool(r.get("norm_topk_prob", False)),
        norm_eps=r.get("rms_norm_eps", 1e-5)))


def qwen3_moe(r: ConfigReader) -> ModelConfig:
    n = r.require("num_hidden_layers")
    window, use_window = r.get("sliding_window"), r.get("use_sliding_window", False)
    window = window if use_window else None
    bias = bool(r.get("attention_bias", False))
    return ModelConfig(family="qwen3_moe", **_common(
        r, num_experts=r.require_any("num_experts", "num_local_experts"), top_k=r.require("num_experts_per_tok"),
        expert_size=r.require("moe_intermediate_size"), dense_size=r.require("intermediate_size"),
        moe_layer_flags=_sparse_step_flags(r, n), sliding_windows=(window,) * n, qk_norm="head",
        qkv_bias=bias, o_bias=bias, routing_rule="softmax_topk", renormalize=bool(r.get("norm_topk_prob", False))))


def qwen2_moe(r: ConfigReader) -> ModelConfig:
    n = r.require("num_hidden_layers")
    use_window = r.get("use_sliding_window", False)
    window = r.get("sliding_window")
    max_window_layers = r.raw.get("max_window_layers", 28)
    types = r.get("layer_types") or [
        "sliding_attention" if use_window and (i + 1) % 2 and i < max_window_layers else "full_attention"
        for i in range(n)]
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown or len(types) != n:
        raise UnsupportedConfigError(f"{r.source}: layer_types must be {n} of full_attention/sliding_attention")
    windows = tuple(window if t == "sliding_attention" and use_window else None for t in types)
    return ModelConfig(family="qwen2_moe", **_common(
        r, num_experts=r.require_any("num_experts", "num_local_experts"), top_k=r.require("num_experts_per_tok"),
        expert_size=r.require("moe_intermediate_size"), dense_size=r.require("intermediate_size"),
        shared_expert_size=r.get("shared_expert_intermediate_size", 0), moe_layer_flags=_sparse_step_flags(r, n),
        sliding_windows=windows, qkv_bias=bool(r.get("qkv_bias", True)), routing_rule="softmax_topk",
        renormalize=bool(r.get("norm_topk_prob", False))))


def mixtral(r: ConfigReader) -> ModelConfig:
    n = r.require("num_hidden_layers")
    return ModelConfig(family="mixtral", **_common(
        r, num_experts=r.require_any("num_local_experts", "num_experts"), top_k=r.require("num_experts_per_tok"),
        expert_size=r.require("intermediate_size"), sliding_windows=(r.get("sliding_window"),) * n,
        routing_rule="softmax_topk", renormalize=True, norm_eps=r.get("rms_norm_eps", 1e-5)))


FAMILIES: dict[str, Callable[[ConfigReader], ModelConfig]] = {
    "olmoe": olmoe, "qwen3_moe": qwen3_moe, "qwen2_moe": qwen2_moe, "mixtral": mixtral,
}


def config_from_hf(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate an HF config dict into a ModelConfig, rejecting unknown families and unsupported fields."""
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedConfigError(
            f"{source}: model_type {model_type!r} is not supported (supported: {sorted(FAMILIES)})")
    reader = ConfigReader(raw, source)
    config = FAMILIES[model_type](reader)
    reader.check_all_read()
    return config
