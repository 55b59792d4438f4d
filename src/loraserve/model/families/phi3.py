"""Phi-3 / Phi-3.5 / Phi-4-mini: Llama's decoder with q, k, v and gate, up fused in the
checkpoint (and in PEFT's target names: ``qkv_proj``, ``gate_up_proj``), LongRoPE, a sliding
window on every layer where set, and partial rotary (Phi-4-mini rotates 3/4 of each head)."""

from __future__ import annotations

from typing import Any

from loraserve.model.args import LayerSpec, ModelArgs
from loraserve.model.families.base import Family, WeightNames, base_args, falsy, only

PHI3_LORA_GROUPS = {
    "qkv": ("qkv_proj",),
    "o": ("o_proj",),
    "gate_up": ("gate_up_proj",),
    "down": ("down_proj",),
}


def phi3_args(config: Any, raw: Any) -> ModelArgs:
    window = config.sliding_window
    return base_args(
        config,
        layers=tuple(LayerSpec(window) for _ in range(config.num_hidden_layers)),
        lora_groups=dict(PHI3_LORA_GROUPS),
    )


PHI3 = Family(
    "Phi3",
    ("Phi3ForCausalLM",),
    "transformers.models.phi3.modeling_phi3:Phi3RotaryEmbedding",
    phi3_args,
    {
        "hidden_act": only("silu"),
        "sliding_window": None,
        "original_max_position_embeddings": None,
        "partial_rotary_factor": None,
        "resid_pdrop": None,
        "embd_pdrop": None,
        # Phi-4-mini's config.json carries these; transformers' Phi3 computes only their defaults
        "attention_bias": falsy,
        "mlp_bias": falsy,
        "lm_head_bias": falsy,
        "full_attn_mod": only(1),
        "interpolate_factor": only(1),
    },
    WeightNames(qkv=("self_attn.qkv_proj",), gate_up=("mlp.gate_up_proj",)),
)
