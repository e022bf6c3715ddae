"""Tiny random HF models and their PyTorch outputs: the independent reference for parity tests."""
from __future__ import annotations

import numpy as np
import torch
import transformers

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)

FAMILIES = {
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=8, num_experts_per_tok=2, clip_qkv=2.0)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, mlp_only_layers=[1],
                       norm_topk_prob=True, head_dim=16, use_sliding_window=True, sliding_window=5)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=40, decoder_sparse_step=1, use_sliding_window=True,
                       sliding_window=5, max_window_layers=2)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=8, num_experts_per_tok=2,
                                                           sliding_window=5)),
}


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A seeded float32 HF model with weights large enough for non-trivial routing."""
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**COMMON, **extra, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)
            else:
                p.normal_(1.0, 0.1)
    return model


def padded_batch(vocab: int, seq: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two rows: row 0 full, row 1 left-padded by 4 (pad id 0)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, (2, seq)).astype(np.int32)
    mask = np.ones((2, seq), np.int32)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


def hf_forward(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HF logits [b, s, V] and router logits [moe_layers, b, s, E], positions counted over real tokens."""
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions, dtype=torch.long), output_router_logits=True)
    b, s = ids.shape
    router = np.stack([r.float().numpy().reshape(b, s, -1) for r in out.router_logits])
    return out.logits.float().numpy(), router
