"""Llama-style architecture presets for pretraining from scratch (torch-free: plain config values)."""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 2048,
        "max_position_embeddings": 1024,
    },
    "small": {
        "hidden_size": 384,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 6,
        "vocab_size": 8192,
        "max_position_embeddings": 2048,
    },
    # About SmolLM2-135M's size: a real base model that a single GPU pretrains in hours, not minutes.
    "base": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "vocab_size": 32768,
        "max_position_embeddings": 2048,
    },
}


def parameter_count(preset: dict[str, Any], vocab_size: int | None = None) -> int:
    """Weights of a LlamaForCausalLM with untied embeddings, computed from the config alone."""
    h, i, n = preset["hidden_size"], preset["intermediate_size"], preset["num_hidden_layers"]
    v = vocab_size or preset["vocab_size"]
    kv = h // preset["num_attention_heads"] * preset["num_key_value_heads"]
    attention = 2 * h * h + 2 * h * kv
    mlp = 3 * h * i
    norms = 2 * h
    return 2 * v * h + n * (attention + mlp + norms) + h
