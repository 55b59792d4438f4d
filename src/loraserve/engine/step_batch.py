"""Build a step's flat batch (``StepBatch``) from the scheduled sequences: the runner's input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from loraserve.engine.activation import lora_spans
from loraserve.engine.block_manager import NULL_BLOCK
from loraserve.engine.sequence import Sequence
from loraserve.model.batch import PrefillSpan, StepBatch

if TYPE_CHECKING:
    from loraserve.model.runner import ModelRunner


def scored_positions(seq: Sequence) -> range:
    """The positions of this step whose logits score the prompt's next token (prompt log-probs,
    ``echo``): position p scores token p + 1; the prompt's last position samples instead."""
    if not seq.scores_prompt:
        return range(0)
    start = max(seq.cached, len(seq.prompt_logprobs))
    return range(start, min(seq.cached + seq.new_tokens, len(seq.prompt_ids) - 1))


def build_step_batch(seqs: list[Sequence], runner: ModelRunner, merged: bool) -> StepBatch:
    """The flat batch of the scheduled ``seqs`` (one-token spans first): ``new_tokens`` tokens
    each from ``cached`` on; logits for those whose input is then complete (the first
    ``sampled_rows`` rows), then for the positions that score a prompt, in ``seqs`` order."""
    block_size = runner.block_size
    ids: list[int] = []
    positions: list[int] = []
    rope_positions: list[int] = []  # differ from positions only for LongRoPE's long prompts
    slot_mapping: list[int] = []
    logits_index: list[int] = []
    decodes = [seq for seq in seqs if seq.new_tokens == 1]  # attend over their cache, batched
    spans: list[PrefillSpan] = []
    lora_prefills: list[tuple[int, int, int]] = []
    scoring: list[int] = []
    for seq in seqs:
        start, first, count = len(ids), seq.cached, seq.new_tokens
        ids.extend(seq.all_ids[first : first + count])
        positions.extend(range(first, first + count))
        offset = runner.rope.rope_offset(len(seq.prompt_ids))
        rope_positions.extend(range(first + offset, first + count + offset))
        table = seq.block_table
        slot_mapping.extend(
            table[p // block_size] * block_size + p % block_size for p in range(first, first + count)
        )
        if first + count == seq.total_len:
            logits_index.append(len(ids) - 1)
        scoring.extend(start + p - first for p in scored_positions(seq))
        if count > 1:
            used = -(-(first + count) // block_size)
            spans.append(PrefillSpan(start, count, first, _tensor(table[:used], runner.device)))
            for offset, length, with_lora in lora_spans(first, count, seq.lora_from):  # activated LoRA
                lora_prefills.append((start + offset, length, seq.lora_slot if with_lora else -1))
    width = max((len(seq.block_table) for seq in decodes), default=0)
    tables = [seq.block_table + [NULL_BLOCK] * (width - len(seq.block_table)) for seq in decodes]
    lengths = [seq.cached + 1 for seq in decodes]
    device = runner.device
    batch = StepBatch(
        input_ids=_tensor(ids, device),
        positions=_tensor(positions, device),
        slot_mapping=_tensor(slot_mapping, device),
        decode_tables=torch.tensor(tables, dtype=torch.long, device=device).view(len(decodes), width),
        decode_lengths=_tensor(lengths, device),
        decode_max_len=max(lengths, default=0),
        block_size=block_size,
        prefills=spans,
        logits_index=_tensor(logits_index + scoring, device),
        sampled_rows=len(logits_index),
        rope_positions=_tensor(rope_positions, device) if rope_positions != positions else None,
    )
    if not merged:
        decode_slots = [s.lora_slot if s.cached >= s.lora_from else -1 for s in decodes]
        batch.lora_plan = runner.lora.plan(decode_slots, lora_prefills)
    return batch


def _tensor(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)
