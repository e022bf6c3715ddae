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
    "input_jitter_noise",
})
# Per rope type: (required, optional) scaling fields, exactly those that moe.layers.rope_tables reads.
ROPE_FIELDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "default": (frozenset(), frozenset()),
    "linear": (frozenset({"factor"}), frozenset()),
    "yarn": (frozenset({"factor", "original_max_position_embeddings"}),
             frozenset({"beta_fast", "beta_slow", "truncate", "attention_factor", "mscale", "mscale_all_dim"})),
    # Phi-3.5-MoE's form: the per-length mscales replace `factor`/`attention_factor`, which HF phimoe ignores.
    "longrope": (frozenset({"short_factor", "long_factor", "short_mscale", "long_mscale",
                            "original_max_position_embeddings"}), frozenset()),
}


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


def _rope(r: ConfigReader, default_theta: float = 10000.0) -> dict[str, Any]:
    """Rope settings from either the v5 `rope_parameters` dict or the older `rope_theta`/`rope_scaling` fields."""
    params = dict(r.get("rope_parameters") or {})
    scaling = r.get("rope_scaling")
    if scaling:
        params.update(scaling)
    theta = params.pop("rope_theta", None) or r.get("rope_theta", default_theta)
    kind = params.pop("rope_type", None) or params.pop("type", None) or "default"
    if kind not in ROPE_FIELDS:
        raise UnsupportedConfigError(f"{r.source}: rope scaling type {kind!r} is not supported "
                                     f"(supported: {sorted(ROPE_FIELDS)})")
    required, optional = ROPE_FIELDS[kind]
    missing = sorted(required - set(params))
    if missing:
        raise UnsupportedConfigError(f"{r.source}: rope type {kind!r} needs field(s) {missing}")
    extra = sorted(set(params) - required - optional)
    if extra:
        raise UnsupportedConfigError(f"{r.source}: rope field(s) {extra} are not supported for rope type {kind!r}")
    r.get("partial_rotary_factor", 1.0)
    return dict(rope_theta=float(theta), rope_kind=kind, rope_params=tuple(params.items()),
                partial_rotary_factor=float(r.raw.get("partial_rotary_factor") or 1.0))


def _common(r: ConfigReader, default_theta: float = 10000.0, **overrides: Any) -> dict[str, Any]:
    hidden, heads = r.require("hidden_size"), r.require("num_attention_heads")
    r.expect("hidden_act", ("silu",), "silu")
    fields = dict(
        vocab_size=r.require("vocab_size"), hidden_size=hidden, num_layers=r.require("num_hidden_layers"),
        num_heads=heads, num_kv_heads=r.get("num_key_value_heads", heads),
        head_dim=r.get("head_dim", hidden // heads), norm_eps=r.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(r.get("tie_word_embeddings", False)),
        max_position_embeddings=r.get("max_position_embeddings", 4096), **_rope(r, default_theta))
    fields.update(overrides)
    return fields


def _layer_windows(r: ConfigReader, types: list[str], window: int | None) -> tuple[int | None, ...]:
    """Per-layer windows from HF `layer_types`: `window` on sliding_attention layers, None on full_attention."""
    n = r.require("num_hidden_layers")
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown or len(types) != n:
        raise UnsupportedConfigError(f"{r.source}: layer_types must be {n} of full_attention/sliding_attention")
    return tuple(window if t == "sliding_attention" else None for t in types)


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
    windows = _layer_windows(r, types, window if use_window else None)
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


def phimoe(r: ConfigReader) -> ModelConfig:
    """Phi-3.5-MoE: LayerNorms with bias, sparsemixer top-2 routing, LongRoPE, optional q/k/v/o and lm_head bias."""
    n = r.require("num_hidden_layers")
    top_k = r.get("num_experts_per_tok", 2)
    if top_k != 2:
        raise UnsupportedConfigError(f"{r.source}: phimoe routes with sparsemixer, which is top-2 only; "
                                     f"num_experts_per_tok={top_k} is not supported")
    bias = bool(r.get("attention_bias", False))
    fields = _common(
        r, default_theta=1e6, num_experts=r.require_any("num_local_experts", "num_experts"), top_k=2,
        expert_size=r.require("intermediate_size"), sliding_windows=(r.get("sliding_window"),) * n, norm="layer",
        norm_eps=r.get("rms_norm_eps", 1e-5), qkv_bias=bias, o_bias=bias, routing_rule="sparsemixer",
        router_jitter=float(r.get("router_jitter_noise", 0.01)), lm_head_bias=bool(r.get("lm_head_bias", False)))
    top_level = r.get("original_max_position_embeddings")  # a copy of the rope field, used by HF generation only
    in_rope = dict(fields["rope_params"]).get("original_max_position_embeddings")
    if top_level is not None and in_rope is not None and top_level != in_rope:
        raise UnsupportedConfigError(f"{r.source}: original_max_position_embeddings {top_level} differs from the "
                                     f"rope scaling's {in_rope}")
    return ModelConfig(family="phimoe", **fields)


def gpt_oss(r: ConfigReader) -> ModelConfig:
    """GPT-OSS: attention sinks and biases, alternating sliding/full layers, YaRN, biased router with top-k then
    softmax, clamped SwiGLU experts with biases."""
    n = r.require("num_hidden_layers")
    top_k = r.require("num_experts_per_tok")
    alias = r.get("experts_per_token")  # the released configs repeat top-k under OpenAI's name
    if alias is not None and alias != top_k:
        raise UnsupportedConfigError(f"{r.source}: experts_per_token {alias} differs from num_experts_per_tok {top_k}")
    r.get("initial_context_length")  # OpenAI's name for the pre-YaRN context; HF does not read it
    if r.raw.get("rope_parameters") is None and r.raw.get("rope_scaling") is None:
        raise UnsupportedConfigError(f"{r.source}: gpt_oss config without rope_parameters/rope_scaling "
                                     "(HF would fill in its YaRN defaults); write them out explicitly")
    types = r.get("layer_types") or ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    bias = bool(r.get("attention_bias", True))
    return ModelConfig(family="gpt_oss", **_common(
        r, default_theta=150000.0, num_experts=r.require_any("num_local_experts", "num_experts"), top_k=top_k,
        expert_size=r.require("intermediate_size"), sliding_windows=_layer_windows(r, types, r.get("sliding_window")),
        norm_eps=r.get("rms_norm_eps", 1e-5), qkv_bias=bias, o_bias=bias, attention_sinks=True,
        routing_rule="topk_softmax", router_bias=True, expert_activation="clamped_swiglu", expert_bias=True,
        swiglu_limit=float(r.get("swiglu_limit", 7.0)), swiglu_alpha=float(r.get("swiglu_alpha", 1.702))))


FAMILIES: dict[str, Callable[[ConfigReader], ModelConfig]] = {
    "olmoe": olmoe, "qwen3_moe": qwen3_moe, "qwen2_moe": qwen2_moe, "mixtral": mixtral, "phimoe": phimoe,
    "gpt_oss": gpt_oss,
}


def _quoted_numbers(value: Any, where: str) -> list[str]:
    """Paths of string values that spell a number (``"hidden_size": "64"``), nested dicts and lists included."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _quoted_numbers(item, f"{where}.{key}" if where else key)]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _quoted_numbers(item, f"{where}[{i}]")]
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return []
        return [f"{where} = {value!r}"]
    return []


def config_from_hf(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate an HF config dict into a ModelConfig, rejecting unknown families, unsupported fields and
    values of the wrong type (every error names `source`)."""
    if not isinstance(raw, dict):
        raise UnsupportedConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    quoted = _quoted_numbers({k: v for k, v in raw.items() if k not in METADATA_FIELDS}, "")
    if quoted:
        raise UnsupportedConfigError(f"{source}: numbers written as strings: {', '.join(quoted)}; "
                                     "write them without quotes")
    model_type = raw.get("model_type")
    if model_type not in FAMILIES:
        raise UnsupportedConfigError(
            f"{source}: model_type {model_type!r} is not supported (supported: {sorted(FAMILIES)})")
    reader = ConfigReader(raw, source)
    try:
        config = FAMILIES[model_type](reader)
    except UnsupportedConfigError:
        raise
    except (TypeError, ValueError) as err:  # a value of the wrong type or out of range
        raise UnsupportedConfigError(f"{source}: {err}") from err
    reader.check_all_read()
    return config
