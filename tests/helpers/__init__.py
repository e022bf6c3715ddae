"""Helpers shared by the tests: tiny HF reference models (hf_reference), a tiny OLMoE checkpoint with the real
tokenizer (tiny_olmoe), and the sharded cases test_sharding runs under 8 simulated devices (sharded_cases)."""
