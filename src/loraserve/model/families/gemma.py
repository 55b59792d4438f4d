"""Gemma 2 and Gemma 3 (text): (1 + w) RMSNorm, embeddings scaled by sqrt(hidden), GeGLU with
tanh-GELU, norms on both sides of attention and MLP, sliding-window layers alternating with
global ones, query scaling by ``query_pre_attn_scalar``; Gemma 2 soft-caps attention and final
logits, Gemma 3 normalises q and k per head and gives its local layers their own RoPE base."""

from __future__ import annotations

import math
from typing import Any

from loraserve.model.args import LayerSpec, ModelArgs
from loraserve.model.families.base import Family, WeightNames, base_args, falsy, only, window_of

FIELDS = {
    "hidden_activation": only("gelu_pytorch_tanh"),
    "hidden_act": only("gelu_pytorch_tanh", None),
    "query_pre_attn_scalar": None,
    "sliding_window": None,
    "layer_types": None,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "attention_bias": None,
    "use_bidirectional_attention": falsy,
    "sliding_window_pattern": None,
}
NAMES = WeightNames(
    mlp_norm="pre_feedforward_layernorm",
    attn_out_norm="post_attention_layernorm",
    mlp_out_norm="post_feedforward_layernorm",
)


def _gemma_args(config: Any, layers: tuple[LayerSpec, ...], **extra: Any) -> ModelArgs:
    bias = bool(config.attention_bias)
    return base_args(
        config,
        qkv_bias=bias,
        o_bias=bias,
        sandwich_norms=True,
        norm_offset=1.0,
        activation="gelu_tanh",
        embed_scale=math.sqrt(config.hidden_size),
        attn_scale=config.query_pre_attn_scalar**-0.5,
        final_softcap=config.final_logit_softcapping,
        layers=layers,
        **extra,
    )


def gemma2_args(config: Any, raw: Any) -> ModelArgs:
    layers = tuple(LayerSpec(window_of(config, kind)) for kind in config.layer_types)
    return _gemma_args(config, layers, attn_softcap=config.attn_logit_softcapping)


def gemma3_args(config: Any, raw: Any) -> ModelArgs:
    # transformers' Gemma 3 attention does not apply attn_logit_softcapping: neither do we
    layers = tuple(LayerSpec(window_of(config, kind), rope=kind) for kind in config.layer_types)
    return _gemma_args(config, layers, qk_norm=True)


GEMMA2 = Family(
    "Gemma2",
    ("Gemma2ForCausalLM",),
    "transformers.models.gemma2.modeling_gemma2:Gemma2RotaryEmbedding",
    gemma2_args,
    FIELDS,
    NAMES,
)
GEMMA3 = Family(
    "Gemma3",
    ("Gemma3ForCausalLM",),
    "transformers.models.gemma3.modeling_gemma3:Gemma3RotaryEmbedding",
    gemma3_args,
    {**FIELDS, "rope_local_base_freq": None},
    WeightNames(
        mlp_norm=NAMES.mlp_norm,
        attn_out_norm=NAMES.attn_out_norm,
        mlp_out_norm=NAMES.mlp_out_norm,
        q_norm="self_attn.q_norm",
        k_norm="self_attn.k_norm",
    ),
    layer_typed_rope=True,
)
