"""Checkpoint name maps: each family is a table of (HF tensor name regex, parameter path template, transform).

Transforms (applied by moe.convert):
- "copy": as stored;                          "linear": [out, in] -> kernel [in, out];
- "expert_linear": one expert's [out, in] -> slot {e} of a stacked [E, in, out];
- "fused_linear": stacked [E, out, in] -> [E, in, out];
- "fused_gate_up": [E, 2F, D] (gate rows first, then up rows) -> gate [E, D, F] and up [E, D, F];
- "interleaved_gate_up": [..., 2F] with gate in even and up in odd last-axis entries (GPT-OSS's [E, D, 2F]
  weight and [E, 2F] bias) -> "{half}" = gate and "{half}" = up, [..., F] each.
Templates use the regex's named groups; "{proj}" is mapped through PROJ to our module names. A template
"layers_{i}/rest" names decoder layer i's parameter; moe.convert stores it at layer i's slot of the stacked
"stack_{j}/rest" of the layer stack holding layer i (ModelConfig.layer_stacks), and "layers_{i}/experts/rest"
at layer i's slot of "experts_{j}/rest" (moe.model.ExpertStack). The experts' "gate" and "up" (and their
biases) are the two halves of the fused "gate_up" ("gate_up_bias"); moe.convert fills each half. MXFP4 pairs
(`X_blocks` + `X_scales`) are dequantised to `X` before these rules see them (moe.mxfp4).
"""
from __future__ import annotations

Rule = tuple[str, str, str]
L = r"model\.layers\.(?P<i>\d+)\."
PROJ = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
        "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down"}

DECODER: list[Rule] = [
    (r"model\.embed_tokens\.weight", "embed", "copy"),
    (r"model\.norm\.weight", "final_norm/scale", "copy"),
    (r"model\.norm\.bias", "final_norm/bias", "copy"),
    (r"lm_head\.weight", "lm_head/kernel", "linear"),
    (r"lm_head\.bias", "lm_head/bias", "copy"),
    (L + r"input_layernorm\.weight", "layers_{i}/input_norm/scale", "copy"),
    (L + r"input_layernorm\.bias", "layers_{i}/input_norm/bias", "copy"),
    (L + r"post_attention_layernorm\.weight", "layers_{i}/post_norm/scale", "copy"),
    (L + r"post_attention_layernorm\.bias", "layers_{i}/post_norm/bias", "copy"),
    (L + r"self_attn\.(?P<proj>[qkvo]_proj)\.weight", "layers_{i}/attn/{proj}/kernel", "linear"),
    (L + r"self_attn\.(?P<proj>[qkvo]_proj)\.bias", "layers_{i}/attn/{proj}/bias", "copy"),
    (L + r"self_attn\.(?P<qk>[qk])_norm\.weight", "layers_{i}/attn/{qk}_norm/scale", "copy"),
]

MOE_MLP: list[Rule] = [  # OLMoE, Qwen2/3-MoE: per-expert or fused experts under `mlp`
    (L + r"mlp\.gate\.weight", "layers_{i}/moe/router/proj/kernel", "linear"),
    (L + r"mlp\.experts\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight", "layers_{i}/experts/{proj}",
     "expert_linear"),
    (L + r"mlp\.experts\.gate_up_proj", "layers_{i}/experts", "fused_gate_up"),
    (L + r"mlp\.experts\.down_proj", "layers_{i}/experts/down", "fused_linear"),
    (L + r"mlp\.(?P<proj>gate_proj|up_proj|down_proj)\.weight", "layers_{i}/mlp/{proj}/kernel", "linear"),
]

SHARED_EXPERT: list[Rule] = [  # Qwen2-MoE
    (L + r"mlp\.shared_expert\.(?P<proj>gate_proj|up_proj|down_proj)\.weight",
     "layers_{i}/moe/shared_expert/{proj}/kernel", "linear"),
    (L + r"mlp\.shared_expert_gate\.weight", "layers_{i}/moe/shared_gate/kernel", "linear"),
]

MIXTRAL: list[Rule] = [
    (L + r"(?:block_sparse_moe|mlp)\.gate\.weight", "layers_{i}/moe/router/proj/kernel", "linear"),
    (L + r"(?:block_sparse_moe|mlp)\.experts\.(?P<e>\d+)\.(?P<proj>w[123])\.weight", "layers_{i}/experts/{proj}",
     "expert_linear"),
    (L + r"(?:block_sparse_moe|mlp)\.experts\.gate_up_proj", "layers_{i}/experts", "fused_gate_up"),
    (L + r"(?:block_sparse_moe|mlp)\.experts\.down_proj", "layers_{i}/experts/down", "fused_linear"),
]

PHIMOE: list[Rule] = [  # Mixtral's expert names; transformers v5 calls the gate `router` in its fused layout
    (L + r"mlp\.router\.weight", "layers_{i}/moe/router/proj/kernel", "linear"),
]

GPT_OSS: list[Rule] = [
    (L + r"self_attn\.sinks", "layers_{i}/attn/sinks", "copy"),
    (L + r"mlp\.router\.weight", "layers_{i}/moe/router/proj/kernel", "linear"),
    (L + r"mlp\.router\.bias", "layers_{i}/moe/router/proj/bias", "copy"),
    (L + r"mlp\.experts\.gate_up_proj", "layers_{i}/experts/{half}", "interleaved_gate_up"),
    (L + r"mlp\.experts\.gate_up_proj_bias", "layers_{i}/experts/{half}_bias", "interleaved_gate_up"),
    (L + r"mlp\.experts\.down_proj", "layers_{i}/experts/down", "copy"),  # already [E, F, D]
    (L + r"mlp\.experts\.down_proj_bias", "layers_{i}/experts/down_bias", "copy"),
]

NAME_MAPS: dict[str, list[Rule]] = {
    "olmoe": DECODER + MOE_MLP,
    "qwen3_moe": DECODER + MOE_MLP,
    "qwen2_moe": DECODER + MOE_MLP + SHARED_EXPERT,
    "mixtral": DECODER + MIXTRAL,
    "phimoe": DECODER + MIXTRAL + PHIMOE,
    "gpt_oss": DECODER + GPT_OSS,
}
