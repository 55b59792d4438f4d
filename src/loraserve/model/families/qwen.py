"""Qwen2 / Qwen2.5 (bias on q, k, v) and Qwen3 dense (RMSNorm per head on q and k, no bias by
default); both may slide a window over the layers from ``max_window_layers`` on."""

from __future__ import annotations

from typing import Any

from loraserve.model.args import LayerSpec, ModelArgs
from loraserve.model.families.base import Family, WeightNames, base_args, only, window_of

FIELDS = {
    "hidden_act": only("silu"),
    "use_sliding_window": None,
    "sliding_window": None,
    "max_window_layers": None,
    "layer_types": None,
}


def _layers(config: Any) -> tuple[LayerSpec, ...]:
    return tuple(LayerSpec(window_of(config, kind)) for kind in config.layer_types)


def qwen2_args(config: Any, raw: Any) -> ModelArgs:
    return base_args(config, qkv_bias=True, layers=_layers(config))


def qwen3_args(config: Any, raw: Any) -> ModelArgs:
    bias = bool(config.attention_bias)
    return base_args(config, qkv_bias=bias, o_bias=bias, qk_norm=True, layers=_layers(config))


QWEN2 = Family(
    "Qwen2",
    ("Qwen2ForCausalLM",),
    "transformers.models.qwen2.modeling_qwen2:Qwen2RotaryEmbedding",
    qwen2_args,
    FIELDS,
)
QWEN3 = Family(
    "Qwen3",
    ("Qwen3ForCausalLM",),
    "transformers.models.qwen3.modeling_qwen3:Qwen3RotaryEmbedding",
    qwen3_args,
    {**FIELDS, "attention_bias": None, "head_dim": None},
    WeightNames(q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
)
