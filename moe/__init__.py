"""Functional Flax MoE decoder covering several HF families, with streaming checkpoint conversion."""
from moe.builtin import BUILTIN_MODELS, organism_path
from moe.config import ModelConfig
from moe.convert import from_pretrained, load_config, save_converted
from moe.model import MoeOutput, MoeTransformer, Router

__all__ = ["BUILTIN_MODELS", "ModelConfig", "MoeOutput", "MoeTransformer", "Router", "from_pretrained", "load_config",
           "organism_path", "save_converted"]
