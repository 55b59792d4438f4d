"""The Llama family (Llama, Mistral, Qwen2, SmolLM2) as one flat, variable-length forward pass.

Every step runs the tokens of all scheduled sequences — one per decoding sequence, a whole
prompt per prefilling one — as a single ``(T, hidden)`` matrix through the linear layers, so
base weights and LoRA stacks are read once per step for the whole batch. Only attention is
per-sequence: decodes are batched over their KV-cache blocks, prefills run causally one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from loraserve.errors import ConfigError

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(slots=True)
class LlamaArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    max_position: int
    tie_word_embeddings: bool
    attention_bias: bool
    rope_factor: float = 1.0

    @classmethod
    def from_hf(cls, config: dict) -> LlamaArgs:
        heads = config["num_attention_heads"]
        rope = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling") or rope
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ("default", "linear"):
            raise ConfigError(f"rope_scaling type {kind} is not supported by the built-in engine")
        arch = (config.get("architectures") or [""])[0]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rms_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=config.get("rope_theta") or rope.get("rope_theta", 10000.0),
            max_position=config.get("max_position_embeddings", 2048),
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=config.get("attention_bias", arch == "Qwen2ForCausalLM"),
            rope_factor=float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0,
        )

    def module_shape(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of a LoRA-targetable projection."""
        h, q, kv, i = (self.hidden_size, self.num_heads * self.head_dim,
                       self.num_kv_heads * self.head_dim, self.intermediate_size)
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}[module]


@dataclass(slots=True)
class PrefillSpan:
    """A run of consecutive tokens of one sequence (a prompt, or a chunk of one) in a step."""

    start: int  # first flat token
    length: int
    past: int  # tokens of the sequence already cached before this span
    blocks: torch.Tensor  # (ceil((past + length) / block_size),) its KV-cache blocks


@dataclass(slots=True)
class StepBatch:
    """Where each token of a step's flat batch comes from. Decode tokens (one per sequence)
    come first; the KV cache is paged: token p of a sequence lives in block ``table[p // bs]``
    at offset ``p % bs``."""

    input_ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    slot_mapping: torch.Tensor  # (T,) block * block_size + offset where each token's KV goes
    decode_tables: torch.Tensor  # (B, M) block tables of the decoding sequences, NULL-padded
    decode_lengths: torch.Tensor  # (B,) cached length after this token
    decode_max_len: int  # longest cached length among decoding sequences
    block_size: int
    prefills: list[PrefillSpan]
    logits_index: torch.Tensor  # (N,) last flat token of each sequence that samples this step
    lora_plan: Any = None  # a lora.LoraPlan when any token uses an adapter

    @property
    def decode_count(self) -> int:
        return self.decode_lengths.numel()


class LlamaWeights:
    """Weights in fused, inference-ready layout: qkv and gate/up concatenated per layer."""

    def __init__(self, args: LlamaArgs, state: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device) -> None:
        def get(name: str) -> torch.Tensor:
            return state.pop(name).to(device=device, dtype=dtype).contiguous()

        self.embed = get("model.embed_tokens.weight")
        self.norm = get("model.norm.weight")
        self.lm_head = self.embed if args.tie_word_embeddings or "lm_head.weight" not in state \
            else get("lm_head.weight")
        self.layers: list[dict[str, torch.Tensor | None]] = []
        for i in range(args.num_layers):
            p = f"model.layers.{i}."
            attn = p + "self_attn."
            mlp = p + "mlp."
            layer: dict[str, torch.Tensor | None] = {
                "qkv": torch.cat([get(attn + f"{m}.weight") for m in ("q_proj", "k_proj", "v_proj")]),
                "o": get(attn + "o_proj.weight"),
                "gate_up": torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")]),
                "down": get(mlp + "down_proj.weight"),
                "input_norm": get(p + "input_layernorm.weight"),
                "post_norm": get(p + "post_attention_layernorm.weight"),
                "qkv_bias": None,
            }
            if args.attention_bias and attn + "q_proj.bias" in state:
                layer["qkv_bias"] = torch.cat(
                    [get(attn + f"{m}.bias") for m in ("q_proj", "k_proj", "v_proj")])
            self.layers.append(layer)

    def nbytes(self) -> int:
        tensors = [self.embed, self.norm] + ([] if self.lm_head is self.embed else [self.lm_head])
        tensors += [t for layer in self.layers for t in layer.values() if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def module_slice(args: LlamaArgs, module: str) -> tuple[str, slice]:
    """Which fused weight, and which output rows of it, a projection lives in."""
    q, kv, i = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim, args.intermediate_size
    return {
        "q_proj": ("qkv", slice(0, q)), "k_proj": ("qkv", slice(q, q + kv)),
        "v_proj": ("qkv", slice(q + kv, q + 2 * kv)), "o_proj": ("o", slice(None)),
        "gate_proj": ("gate_up", slice(0, i)), "up_proj": ("gate_up", slice(i, 2 * i)),
        "down_proj": ("down", slice(None)),
    }[module]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class RotaryEmbedding:
    def __init__(self, args: LlamaArgs, device: torch.device) -> None:
        half = args.head_dim // 2
        inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, half, dtype=torch.float32) * 2 / args.head_dim))
        positions = torch.arange(args.max_position, dtype=torch.float32) / args.rope_factor
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # (P, d)
        self.cos, self.sin = emb.cos().to(device), emb.sin().to(device)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (T, 1, d) for a step's positions: looked up once, used by every layer."""
        return (self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype))

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (T, heads, d) rotated by its token's position, HF's rotate-half convention."""
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin
