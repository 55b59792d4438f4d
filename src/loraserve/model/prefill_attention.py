"""Attention for a step's prompt tokens (prefill spans), read back from the paged KV cache.

Whole prompts that sit side by side in the flat batch with one length (requests arriving together
with prompts of one length, the usual burst) share one batched causal
``scaled_dot_product_attention`` call and one gather of their blocks, instead of one of each per
sequence: at batch 32 with 32-token prompts (SmolLM2, 30 layers) the prefill step spent ~90 ms in
960 per-sequence calls and their gathers. That call computes each (sequence, head) alone, so a
sequence gets the bits its own call gives (tested). Attention with a mask (a cached past, a
window) or a soft-cap still runs span by span: in fp32, PyTorch's masked attention over a batch
differed from the calls one by one in the last bit, and a request's output must not depend on
what else is in its step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loraserve.model.batch import PrefillSpan
from loraserve.model.layer_ops import AttentionSpec


@dataclass(frozen=True, slots=True)
class PrefillGroup:
    """``count`` prefill spans of ``length`` tokens each after ``past`` cached ones, laid out one
    after another from flat token ``start``; ``blocks`` (count, nb): each span's KV blocks."""

    start: int
    count: int
    length: int
    past: int
    blocks: torch.Tensor

    def spans(self) -> list[PrefillGroup]:
        """Each span of the group as a group of one."""
        return [
            PrefillGroup(self.start + i * self.length, 1, self.length, self.past, self.blocks[i : i + 1])
            for i in range(self.count)
        ]


def group_prefills(spans: list[PrefillSpan]) -> list[PrefillGroup]:
    """The step's spans, each run of adjacent whole prompts (no cached past) of one length as one
    group; every other span a group of its own."""
    groups: list[PrefillGroup] = []
    run: list[PrefillSpan] = []

    def close() -> None:
        if run:
            first = run[0]
            blocks = torch.stack([span.blocks for span in run])
            groups.append(PrefillGroup(first.start, len(run), first.length, first.past, blocks))
            run.clear()

    for span in spans:
        if run and not (
            span.past == 0
            and run[0].past == 0
            and span.length == run[0].length
            and span.start == run[-1].start + run[-1].length
            and span.blocks.shape == run[0].blocks.shape
        ):
            close()
        run.append(span)
    close()
    return groups


def attend_prefills(
    q: torch.Tensor,
    groups: list[PrefillGroup],
    spec: AttentionSpec,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """out's rows (T, H, d) of each group's spans: their queries (rows of q (T, H, d)) over their
    cached past and themselves; the layer's caches are (N, kvh, bs, d)."""
    heads, dim = q.shape[1], q.shape[2]
    calls = [call for group in groups for call in ([group] if unmasked(spec, group.past) else group.spans())]
    for group in calls:
        rows = slice(group.start, group.start + group.count * group.length)
        query = q[rows].view(group.count, group.length, heads, dim).transpose(1, 2)  # (S, H, n, d)
        total = group.past + group.length
        keys = gather_blocks(k_cache, group.blocks, total)  # (S, kvh, past + n, d)
        values = gather_blocks(v_cache, group.blocks, total)
        attended = prefill_attention(query, keys, values, group.past, spec)  # (S, H, n, d)
        out[rows] = attended.transpose(1, 2).reshape(-1, heads, dim)


def unmasked(spec: AttentionSpec, past: int) -> bool:
    """Whether ``prefill_attention`` takes SDPA's causal path, with no mask: the one path whose
    batched call gives each sequence its own call's bits, so the only one a group runs batched."""
    return spec.window is None and spec.softcap is None and past == 0


def prefill_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, past: int, spec: AttentionSpec
) -> torch.Tensor:
    """query (S, H, n, d) at positions [past, past + n) over keys/values (S, kvh, past + n, d):
    causal, within the window where the layer has one, logits soft-capped where it caps them."""
    n, total = query.shape[2], keys.shape[2]
    if unmasked(spec, past):
        return F.scaled_dot_product_attention(
            query, keys, values, is_causal=True, scale=spec.scale, enable_gqa=True
        )
    rows = torch.arange(past, total, device=query.device)[:, None]  # (n, 1) query positions
    cols = torch.arange(total, device=query.device)[None, :]
    visible = cols <= rows
    if spec.window is not None:
        visible &= cols > rows - spec.window
    if spec.softcap is None:
        return F.scaled_dot_product_attention(
            query, keys, values, attn_mask=visible, scale=spec.scale, enable_gqa=True
        )
    group = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    scores = torch.matmul(query, keys.transpose(-1, -2)).float() * spec.scale  # (S, H, n, total)
    scores = torch.tanh(scores / spec.softcap) * spec.softcap
    scores.masked_fill_(~visible, float("-inf"))
    assert n == visible.shape[0]
    return torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)


def gather_blocks(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` positions of each sequence, contiguous: cache (N, kvh, bs, d) and
    their blocks (S, nb) → (S, kvh, length, d)."""
    picked = cache[blocks]  # (S, nb, kvh, bs, d)
    count, kv_heads, dim = picked.shape[0], picked.shape[2], picked.shape[4]
    return picked.transpose(1, 2).reshape(count, kv_heads, -1, dim)[:, :, :length]
