"""Random-weight models in the real shapes of the models CPU users serve, for speed benchmarks
(speed does not depend on the values): built once with transformers' own config classes, saved
as safetensors in bf16 with a word-level tokenizer of the model's vocabulary size (prompts are
token ids; the text is never read), cached under loraserve's cache folder.

    python -m benchmarks.shaped_models llama-3.2-1b     # prints the model directory
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
    },
    "qwen3-0.6b": {
        "model_type": "qwen3",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
    },
}


def shaped_model(name: str) -> Path:
    """The directory of the random ``name``-shaped model, built on first use."""
    from loraserve.model.loader import cache_root

    if name not in SHAPES:
        raise SystemExit(f"unknown shape {name}; known: {', '.join(SHAPES)}")
    target = cache_root() / "shaped" / name
    if (target / "config.json").is_file():
        return target
    _build(SHAPES[name], target)
    return target


def _build(shape: dict[str, Any], target: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    fields = dict(shape)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    staging = target.with_name(target.name + ".partial")
    model.save_pretrained(staging, safe_serialization=True)
    words = {f"t{i}": i for i in range(config.vocab_size)}
    core = Tokenizer(models.WordLevel(vocab=words, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="t0", eos_token="t1", bos_token="t2")
    tokenizer.save_pretrained(staging)
    staging.rename(target)


if __name__ == "__main__":
    print(shaped_model(sys.argv[1] if len(sys.argv) > 1 else "llama-3.2-1b"))
