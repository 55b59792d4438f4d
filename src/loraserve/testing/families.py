"""Tiny random models of every family the built-in engine serves, built with transformers' own
config classes with each family's features switched on (sliding windows shorter than the test
prompts, soft-capping, QK-norm, fused projections, RoPE scaling with a factor), so the engine is
compared with transformers itself, token for token. Needs the ``engine`` and ``test`` extras."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraserve.testing.tiny import make_tokenizer

WINDOW = 12  # shorter than the tests' prompts
ORIGINAL_CONTEXT = 32  # the scaled RoPE types' original_max_position_embeddings

# family → (model_type, architecture, config fields that switch its features on)
FAMILY_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama3": (
        "llama",
        "LlamaForCausalLM",
        {
            "attention_bias": True,
            "mlp_bias": True,
            "head_dim": 24,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": ORIGINAL_CONTEXT,
            },
        },
    ),
    "llama2-dynamic": (
        "llama",
        "LlamaForCausalLM",
        {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}},
    ),
    "mistral": ("mistral", "MistralForCausalLM", {"sliding_window": WINDOW}),
    "qwen2": (
        "qwen2",
        "Qwen2ForCausalLM",
        {
            "use_sliding_window": True,
            "sliding_window": WINDOW,
            "max_window_layers": 1,
            "rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        },
    ),
    "qwen3": (
        "qwen3",
        "Qwen3ForCausalLM",
        {
            "attention_bias": True,
            "head_dim": 32,
            "use_sliding_window": True,
            "sliding_window": WINDOW,
            "max_window_layers": 1,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": ORIGINAL_CONTEXT,
            },
        },
    ),
    "gemma2": (
        "gemma2",
        "Gemma2ForCausalLM",
        {
            "head_dim": 16,
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 24,
            "attn_logit_softcapping": 4.0,
            "final_logit_softcapping": 15.0,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": True,
        },
    ),
    "gemma3": (
        "gemma3_text",
        "Gemma3ForCausalLM",
        {
            "head_dim": 16,
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 24,
            "final_logit_softcapping": 15.0,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
            },
            "tie_word_embeddings": True,
        },
    ),
    "phi3": (
        "phi3",
        "Phi3ForCausalLM",
        {
            "sliding_window": WINDOW,
            "original_max_position_embeddings": ORIGINAL_CONTEXT,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.75,
            },
        },
    ),
}


def family_config_fields(
    family: str,
    vocab: int = 64,
    layers: int = 3,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 96,
    max_positions: int = 128,
    **overrides: Any,
) -> dict[str, Any]:
    """The config fields of a tiny ``family`` model: sizes, then the family's features."""
    _, architecture, features = FAMILY_CONFIGS[family]
    fields: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        tie_word_embeddings=False,
        architectures=[architecture],
    )
    fields.update(features)
    fields.update(overrides)
    if "layer_types" in fields:  # the pattern repeated over the layers asked for
        pattern = fields["layer_types"]
        fields["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
    rope = fields.get("rope_parameters") or {}
    if rope.get("rope_type") == "longrope":  # one factor per rotated pair of dims
        head_dim = fields.get("head_dim") or hidden // heads
        pairs = int(head_dim * rope.get("partial_rotary_factor", 1.0)) // 2
        fields["rope_parameters"] = {
            **rope,
            "short_factor": [1.0 + 0.25 * i / pairs for i in range(pairs)],
            "long_factor": [1.5 + 12.0 * i / pairs for i in range(pairs)],
        }
    return fields


def make_tiny_family(target: Path, family: str, seed: int = 0, **sizes_and_overrides: Any) -> Path:
    """Save a random ``family`` model (a key of ``FAMILY_CONFIGS``) with a tokenizer; sizes and
    overrides as ``family_config_fields`` takes them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    make_tokenizer(target)
    vocab = len(json.loads((target / "tokenizer.json").read_text())["model"]["vocab"]) + 2
    model_type = FAMILY_CONFIGS[family][0]
    fields = family_config_fields(family, vocab=vocab, **sizes_and_overrides)
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():  # livelier logits than the default init
            if param.dim() > 1:
                param.normal_(0, 0.2)
            elif "norm" in name:
                param.uniform_(-0.2, 0.2) if family.startswith("gemma") else param.uniform_(0.8, 1.2)
            else:
                param.normal_(0, 0.1)  # biases
    model.save_pretrained(target, safe_serialization=True)
    return target
