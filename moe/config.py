"""One frozen config for every supported family: the differences between families are data here."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

ROUTING_RULES = ("softmax_topk", "topk_softmax", "sparsemixer")
EXPERT_ACTIVATIONS = ("swiglu", "clamped_swiglu")
NORM_KINDS = ("rms", "layer")
QK_NORM_KINDS = (None, "projection", "head")
ROPE_KINDS = ("default", "linear", "yarn", "longrope")
# What each scalar field must hold (by its annotation); bools are never accepted as numbers.
FIELD_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "str | None": (str, type(None)),
               "float | None": (int, float, type(None))}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one MoE decoder. Per-layer variation is held in tuples of length `num_layers`.

    Fields are plain data so that the config round-trips through JSON and can be a static argument of
    jitted functions.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    expert_size: int  # hidden size of one routed expert
    dense_size: int = 0  # hidden size of the dense MLP of non-MoE layers
    shared_expert_size: int = 0  # 0: no shared expert (Qwen2-MoE has one, gated by a sigmoid)
    moe_layer_flags: tuple[bool, ...] = ()  # per layer: MoE (True) or dense MLP (False)
    sliding_windows: tuple[int | None, ...] = ()  # per layer: window size or None for full attention
    norm: str = "rms"
    norm_eps: float = 1e-6
    qk_norm: str | None = None  # "projection": over the whole q/k projection (OLMoE); "head": per head (Qwen3)
    clip_qkv: float | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    attention_sinks: bool = False
    rope_theta: float = 10000.0
    rope_kind: str = "default"
    rope_params: tuple[tuple[str, Any], ...] = ()  # extra rope-scaling fields, as sorted (name, value) pairs
    partial_rotary_factor: float = 1.0
    routing_rule: str = "softmax_topk"
    renormalize: bool = False  # softmax_topk: divide the k selected probabilities by their sum
    router_bias: bool = False
    router_jitter: float = 0.0  # sparsemixer's jitter threshold epsilon
    expert_activation: str = "swiglu"
    expert_bias: bool = False
    swiglu_limit: float = 7.0  # clamped_swiglu only
    swiglu_alpha: float = 1.702  # clamped_swiglu only
    tie_embeddings: bool = False
    lm_head_bias: bool = False
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        wrong = [f"{f.name} = {getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.type in FIELD_TYPES
                 and not _is(getattr(self, f.name), FIELD_TYPES[f.type])]
        if not all(_is(w, (int, type(None))) for w in self.sliding_windows):
            wrong.append(f"sliding_windows = {list(self.sliding_windows)!r}")
        if wrong:
            raise ValueError("invalid ModelConfig: wrong type for " + ", ".join(wrong))
        n = self.num_layers
        if not self.moe_layer_flags:
            object.__setattr__(self, "moe_layer_flags", (True,) * n)
        if not self.sliding_windows:
            object.__setattr__(self, "sliding_windows", (None,) * n)
        object.__setattr__(self, "moe_layer_flags", tuple(bool(f) for f in self.moe_layer_flags))
        object.__setattr__(self, "sliding_windows", tuple(None if w is None else int(w) for w in self.sliding_windows))
        object.__setattr__(self, "rope_params", tuple(sorted((str(k), _freeze(v)) for k, v in self.rope_params)))
        half_rotary = int(self.head_dim * self.partial_rotary_factor) // 2
        checks = [
            (len(self.moe_layer_flags) == n, f"moe_layer_flags has {len(self.moe_layer_flags)} entries for {n} layers"),
            (len(self.sliding_windows) == n, f"sliding_windows has {len(self.sliding_windows)} entries for {n} layers"),
            (self.routing_rule in ROUTING_RULES, f"routing_rule {self.routing_rule!r} not in {ROUTING_RULES}"),
            (self.expert_activation in EXPERT_ACTIVATIONS, f"expert_activation {self.expert_activation!r} not in {EXPERT_ACTIVATIONS}"),
            (self.norm in NORM_KINDS, f"norm {self.norm!r} not in {NORM_KINDS}"),
            (self.qk_norm in QK_NORM_KINDS, f"qk_norm {self.qk_norm!r} not in {QK_NORM_KINDS}"),
            (self.rope_kind in ROPE_KINDS, f"rope_kind {self.rope_kind!r} not in {ROPE_KINDS}"),
            (self.num_heads % self.num_kv_heads == 0, f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"),
            (1 <= self.top_k <= self.num_experts, f"top_k {self.top_k} must be in [1, num_experts={self.num_experts}]"),
            (self.routing_rule != "sparsemixer" or self.top_k == 2, f"sparsemixer routing is top-2 only, got top_k={self.top_k}"),
            (self.rope_kind != "longrope"
             or all(len(self.rope_param(f, ())) == half_rotary for f in ("short_factor", "long_factor")),
             f"longrope short_factor and long_factor must each have rotary_dim / 2 = {half_rotary} entries"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid ModelConfig: {message}")

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the decoder layers that are MoE layers, in order."""
        return tuple(i for i, is_moe in enumerate(self.moe_layer_flags) if is_moe)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def layer_stacks(self) -> tuple[tuple[int, ...], ...]:
        """Runs of consecutive layers of one kind (MoE or dense MLP), in layer order: the model's scanned
        stacks `stack_0`, `stack_1`, ... (a single stack when every layer is an MoE layer)."""
        stacks: list[list[int]] = []
        for i, is_moe in enumerate(self.moe_layer_flags):
            if stacks and self.moe_layer_flags[stacks[-1][0]] == is_moe:
                stacks[-1].append(i)
            else:
                stacks.append([i])
        return tuple(tuple(s) for s in stacks)

    def rope_param(self, name: str, default: Any = None) -> Any:
        return dict(self.rope_params).get(name, default)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """The config of `to_json`'s text; ValueError for invalid JSON, unknown, missing or mistyped fields."""
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError(f"a ModelConfig is a JSON object, got {type(fields).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in fields)
        if missing:
            raise ValueError(f"ModelConfig fields {missing} are missing")
        fields["moe_layer_flags"] = tuple(fields.get("moe_layer_flags", ()))
        fields["sliding_windows"] = tuple(fields.get("sliding_windows", ()))
        fields["rope_params"] = tuple(tuple(p) for p in fields.get("rope_params", ()))
        return cls(**fields)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that a bool is no int or float."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _freeze(value: Any) -> Any:
    """Lists become tuples so that the config stays hashable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
