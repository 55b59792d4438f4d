"""A step's flat batch as the model runs it: where each token comes from and where its KV goes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


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
    logits_index: torch.Tensor  # (N,) last flat token of each sequence that samples this step,
    # then (when a request scores its prompt) the positions whose logits score a prompt token
    lora_plan: Any = None  # the LoRA backend's plan (lora.LoraPlan) when any token uses an adapter
    rope_positions: torch.Tensor | None = None  # (T,) rows of the RoPE tables (LongRoPE); None: positions
    sampled_rows: int | None = None  # logits rows that sample (the first ones); None: all

    @property
    def decode_count(self) -> int:
        return self.decode_lengths.numel()

    @property
    def rope_rows(self) -> torch.Tensor:
        return self.positions if self.rope_positions is None else self.rope_positions
