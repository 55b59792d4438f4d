"""What a decoder computes, family by family, as one typed description (``ModelArgs``).

A family module (``families/``) reads a model's ``config.json`` into these fields and refuses
every field it does not implement; the decoder, the LoRA stacks and the kernels read only this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The fused weights every family is loaded into: a step runs one GEMM per group.
FUSED = ("qkv", "o", "gate_up", "down")
# PEFT's module names for the unfused checkpoints (Llama, Mistral, Qwen, Gemma): group of each.
SPLIT_LORA_GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """How one layer attends: ``window`` keys back (j > i - window, as transformers masks), or
    all of them (None), with the RoPE tables named ``rope``."""

    window: int | None = None
    rope: str = "default"


@dataclass(slots=True)
class ModelArgs:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    max_position: int
    tie_word_embeddings: bool
    layers: tuple[LayerSpec, ...] = ()
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm per head on q and k before RoPE (Qwen3, Gemma 3)
    sandwich_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 2/3)
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + w): folded into w at load
    activation: str = "silu"  # of the gated MLP: silu (SwiGLU) or gelu_tanh (GeGLU)
    embed_scale: float | None = None  # Gemma multiplies embeddings by sqrt(hidden)
    attn_scale: float = 0.0  # 0: head_dim ** -0.5
    attn_softcap: float | None = None  # Gemma 2: cap * tanh(score / cap)
    final_softcap: float | None = None
    lora_groups: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SPLIT_LORA_GROUPS))

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = tuple(LayerSpec() for _ in range(self.num_layers))
        if not self.attn_scale:
            self.attn_scale = self.head_dim**-0.5

    @property
    def lora_modules(self) -> tuple[str, ...]:
        """The module names PEFT adapters of this family target."""
        return tuple(m for group in FUSED for m in self.lora_groups[group])

    def fused_shape(self, group: str) -> tuple[int, int]:
        """(in_features, out_features) of a fused weight."""
        h, q, kv, i = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        return {"qkv": (h, q + 2 * kv), "o": (q, h), "gate_up": (h, 2 * i), "down": (i, h)}[group]

    def module_slice(self, module: str) -> tuple[str, slice]:
        """Which fused weight, and which of its output rows, a LoRA-targetable module is."""
        q, kv, i = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        parts = {
            "q_proj": ("qkv", slice(0, q)),
            "k_proj": ("qkv", slice(q, q + kv)),
            "v_proj": ("qkv", slice(q + kv, q + 2 * kv)),
            "gate_proj": ("gate_up", slice(0, i)),
            "up_proj": ("gate_up", slice(i, 2 * i)),
            "qkv_proj": ("qkv", slice(None)),
            "gate_up_proj": ("gate_up", slice(None)),
            "o_proj": ("o", slice(None)),
            "down_proj": ("down", slice(None)),
        }
        return parts[module]

    def module_shape(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of a LoRA-targetable module."""
        group, rows = self.module_slice(module)
        fan_in, fan_out = self.fused_shape(group)
        return fan_in, len(range(fan_out)[rows])


# The PEFT target modules of the unfused families (Llama, Mistral, Qwen, Gemma), in layer order.
LORA_MODULES = tuple(m for group in FUSED for m in SPLIT_LORA_GROUPS[group])
