"""Llama 1/2/3.x (and SmolLM2) and Mistral: the plain pre-norm SwiGLU decoder the others vary."""

from __future__ import annotations

from typing import Any

from loraserve.model.args import LayerSpec, ModelArgs
from loraserve.model.families.base import Family, base_args, only

SWIGLU = {"hidden_act": only("silu")}


def llama_args(config: Any, raw: Any) -> ModelArgs:
    return base_args(
        config,
        qkv_bias=bool(config.attention_bias),
        o_bias=bool(config.attention_bias),
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
    )


def mistral_args(config: Any, raw: Any) -> ModelArgs:
    window = config.sliding_window  # Mistral-7B-v0.1: every layer attends 4096 tokens back
    return base_args(config, layers=tuple(LayerSpec(window) for _ in range(config.num_hidden_layers)))


LLAMA = Family(
    "Llama",
    ("LlamaForCausalLM",),
    "transformers.models.llama.modeling_llama:LlamaRotaryEmbedding",
    llama_args,
    {**SWIGLU, "attention_bias": None, "mlp_bias": None, "pretraining_tp": None},
)
MISTRAL = Family(
    "Mistral",
    ("MistralForCausalLM",),
    "transformers.models.mistral.modeling_mistral:MistralRotaryEmbedding",
    mistral_args,
    {**SWIGLU, "sliding_window": None},
)
