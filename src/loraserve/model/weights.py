"""A model's weights in the fused, inference-ready layout every family shares: q, k, v and gate,
up concatenated per layer (one GEMM each), norms with Gemma's ``1 + w`` folded in."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from loraserve.errors import ConfigError
from loraserve.model.args import ModelArgs
from loraserve.model.families.base import WeightNames


@dataclass(slots=True)
class LayerWeights:
    qkv: torch.Tensor  # (H*d + 2*kvh*d, hidden)
    o: torch.Tensor  # (hidden, H*d)
    gate_up: torch.Tensor  # (2I, hidden)
    down: torch.Tensor  # (hidden, I)
    attn_norm: torch.Tensor  # before attention
    mlp_norm: torch.Tensor  # before the MLP
    attn_out_norm: torch.Tensor | None = None  # on the attention output (Gemma)
    mlp_out_norm: torch.Tensor | None = None  # on the MLP output (Gemma)
    q_norm: torch.Tensor | None = None  # (d,) per head (Qwen3, Gemma 3)
    k_norm: torch.Tensor | None = None
    qkv_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    gate_up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None

    def fused(self, name: str) -> torch.Tensor:
        """One of the four fused weights (qkv, o, gate_up, down)."""
        return getattr(self, name)  # type: ignore[no-any-return]

    def bias(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"{name}_bias")  # type: ignore[no-any-return]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (getattr(self, f.name) for f in fields(self)) if t is not None]


class ModelWeights:
    def __init__(
        self,
        args: ModelArgs,
        names: WeightNames,
        state: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        def get(name: str, offset: float = 0.0) -> torch.Tensor:
            if name not in state:
                raise ConfigError(f"the checkpoint has no tensor {name} (needed by {args.architecture})")
            tensor = state.pop(name)
            if offset:
                tensor = tensor.float() + offset  # Gemma's (1 + w), in fp32 as transformers computes it
            return tensor.to(device=device, dtype=dtype).contiguous()

        def cat(prefix: str, parts: tuple[str, ...], suffix: str) -> torch.Tensor:
            return torch.cat([get(f"{prefix}{part}.{suffix}") for part in parts])

        def norm(prefix: str, name: str) -> torch.Tensor:
            return get(f"{prefix}{name}.weight", args.norm_offset)

        def optional_norm(prefix: str, name: str | None) -> torch.Tensor | None:
            return None if name is None else norm(prefix, name)

        self.embed = get("model.embed_tokens.weight")
        self.norm = get("model.norm.weight", args.norm_offset)
        if args.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway
        self.lm_head = get("lm_head.weight") if "lm_head.weight" in state else self.embed
        self.layers: list[LayerWeights] = []
        for i in range(args.num_layers):
            p = f"model.layers.{i}."
            layer = LayerWeights(
                qkv=cat(p, names.qkv, "weight"),
                o=get(f"{p}{names.o}.weight"),
                gate_up=cat(p, names.gate_up, "weight"),
                down=get(f"{p}{names.down}.weight"),
                attn_norm=norm(p, names.attn_norm),
                mlp_norm=norm(p, names.mlp_norm),
                attn_out_norm=optional_norm(p, names.attn_out_norm),
                mlp_out_norm=optional_norm(p, names.mlp_out_norm),
                q_norm=optional_norm(p, names.q_norm if args.qk_norm else None),
                k_norm=optional_norm(p, names.k_norm if args.qk_norm else None),
            )
            if args.qkv_bias:
                layer.qkv_bias = cat(p, names.qkv, "bias")
            if args.o_bias:
                layer.o_bias = get(f"{p}{names.o}.bias")
            if args.mlp_bias:
                layer.gate_up_bias = cat(p, names.gate_up, "bias")
                layer.down_bias = get(f"{p}{names.down}.bias")
            self.layers.append(layer)
        unused = [name for name in state if not name.endswith("rotary_emb.inv_freq")]
        if unused:  # a tensor the config does not account for would be silently dropped
            raise ConfigError(
                f"the checkpoint holds tensors the {args.architecture} config does not use "
                f"(e.g. {', '.join(sorted(unused)[:3])}); refusing rather than ignoring them"
            )

    def tensors(self) -> list[torch.Tensor]:
        """Every weight once (a tied head is the embedding)."""
        tensors = [self.embed, self.norm] + ([] if self.lm_head is self.embed else [self.lm_head])
        return tensors + [t for layer in self.layers for t in layer.tensors()]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
