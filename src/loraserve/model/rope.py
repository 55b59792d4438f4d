"""Rotary position tables for every RoPE type transformers implements, computed by the family's
own transformers rotary class (so default, linear, dynamic, llama3, yarn and longrope, partial
rotary and attention scaling are exactly theirs), then indexed by position at serving time.

LongRoPE switches factor sets by sequence length. transformers' cached generation uses the long
factors for a whole prompt longer than ``original_max_position_embeddings``, and otherwise the
short ones until a token's position passes it. Rows ``[0, P)`` hold the short-then-long table,
rows ``[P, 2P)`` the long one; a sequence with a long prompt reads the second half
(``rope_position``). Dynamic NTK equals the default table within ``max_position_embeddings``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from loraserve.model.families.base import Family


class RopeTables:
    def __init__(
        self, family: Family, config: Any, kinds: set[str], max_len: int, device: torch.device
    ) -> None:
        module, name = family.rotary.split(":")
        rotary = getattr(importlib.import_module(module), name)(config=config)
        probe = torch.zeros(1, dtype=torch.float32)
        self.positions = max_len
        self.long_after: int | None = None  # longrope: original_max_position_embeddings
        self.cos: dict[str, torch.Tensor] = {}  # kind → (P or 2P, rotary_dim) fp32
        self.sin: dict[str, torch.Tensor] = {}

        def table(kind: str, length: int) -> tuple[torch.Tensor, torch.Tensor]:
            ids = torch.arange(length)[None]
            args = (probe, ids, kind) if family.layer_typed_rope else (probe, ids)
            with torch.no_grad():
                cos, sin = rotary(*args)
            return cos[0].float(), sin[0].float()

        for kind in sorted(kinds):
            cos, sin = table(kind, max_len)
            original = _longrope_original(config, kind if family.layer_typed_rope else None)
            if original is not None and max_len > original:
                short_cos, short_sin = table(kind, original)  # transformers' short factors
                head_cos, head_sin = cos.clone(), sin.clone()
                head_cos[:original], head_sin[:original] = short_cos, short_sin
                cos, sin = torch.cat([head_cos, cos]), torch.cat([head_sin, sin])
                self.long_after = original
            self.cos[kind], self.sin[kind] = cos.contiguous().to(device), sin.contiguous().to(device)
        self.rotary_dim = next(iter(self.cos.values())).shape[1]

    def long_prompt(self, prompt_len: int) -> bool:
        """Whether a sequence with this prompt reads the long LongRoPE table throughout."""
        return self.long_after is not None and prompt_len > self.long_after

    def rope_offset(self, prompt_len: int) -> int:
        """Added to a sequence's positions to index its rows of the tables."""
        return self.positions if self.long_prompt(prompt_len) else 0

    def rows(
        self, kind: str, rope_positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (T, 1, r) of a step's tokens, for the PyTorch path."""
        return (
            self.cos[kind][rope_positions].unsqueeze(1).to(dtype),
            self.sin[kind][rope_positions].unsqueeze(1).to(dtype),
        )


def _longrope_original(config: Any, kind: str | None) -> int | None:
    params = config.rope_parameters or {}
    if kind is not None:
        params = params.get(kind, {})
    if params.get("rope_type") != "longrope":
        return None
    return int(params.get("original_max_position_embeddings") or config.original_max_position_embeddings)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, d) rotated by its token's position (rotate-half convention) over the first
    ``r = cos.shape[-1]`` dims of each head; the rest pass through (partial rotary)."""
    r = cos.shape[-1]
    part = x[..., :r]
    half = r // 2
    rotated = torch.cat([-part[..., half:], part[..., :half]], dim=-1)
    out = part * cos + rotated * sin
    return out if r == x.shape[-1] else torch.cat([out, x[..., r:]], dim=-1)
