"""Attention for a step's prompt tokens (prefill spans), read back from the paged KV cache.

Where the native kernels run, a short span's tokens attend as rows of the paged decode kernel
(``PagedRows``): token j of a span after ``past`` cached tokens is one more query over the first
``past + j + 1`` keys of the span's blocks, read in place. Up to 64 K (query, key) pairs a span,
rows beat PyTorch's ``scaled_dot_product_attention`` on SmolLM2's and Qwen3's heads at every
shape tried (2.5-9x for 32 prompts of 16-32 tokens, 1.4-2.9x for 8-16 tokens after 2,000-3,000
cached), because SDPA's per-call cost and the gather of the blocks dominate such small attention;
and at d 64 up to 512 x 512 tokens. Longer spans go to SDPA, which wins once a span's attention
is a large enough matrix product (``ROW_WORK``).

For SDPA, whole prompts that sit side by side in the flat batch with one length (requests
arriving together with prompts of one length, the usual burst) share one batched causal call and
one gather of their blocks, instead of one of each per sequence. That call computes each
(sequence, head) alone, so a sequence gets the bits its own call gives (tested). Attention with a
mask (a cached past, a window) or a soft-cap still runs span by span: in fp32, PyTorch's masked
attention over a batch differed from the calls one by one in the last bit, and a request's output
must not depend on what else is in its step. Which path a span takes depends on its own length
and past alone, for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loraserve.model.batch import PrefillSpan
from loraserve.model.layer_ops import AttentionSpec

# A span attends as rows of the paged kernel up to this much work: (query, key) pairs (length x
# (past + length)) times the head size. 2^24 is 512 x 512 tokens at d 64, 362 x 362 at d 128,
# where rows still beat SDPA on the heads measured (AVX512-BF16 Zen 4, bf16: d 64 wins 1.27-1.9x
# at 512 tokens and loses at 768; d 128 breaks even at 512 and wins 1.1-1.2x up to 128 K pairs).
ROW_WORK = 1 << 24


def row_limit(head_dim: int) -> int:
    """The most (query, key) pairs of a span that attends as rows, at this head size."""
    return ROW_WORK // head_dim


# ops.paged_attention: (q (R, H, d), k_cache, v_cache, tables (S, M), lengths (R,), spec,
# out (R, H, d), table_of (R,): row r's row of tables)
PagedAttention = Callable[
    [
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        AttentionSpec,
        torch.Tensor,
        torch.Tensor,
    ],
    None,
]


@dataclass(frozen=True, slots=True)
class PagedRows:
    """Adjacent spans whose tokens attend as rows of the paged kernel: the step's rows [start,
    start + count), row r over the first ``lengths[r]`` keys of its span's blocks,
    ``tables[table_of[r]]`` (one table a span, padded with block 0, which the kernel does not
    read past ``lengths[r]``: a row per token would cost tokens x blocks)."""

    start: int
    tables: torch.Tensor  # (spans, M)
    table_of: torch.Tensor  # (count,)
    lengths: torch.Tensor  # (count,)

    @property
    def count(self) -> int:
        return self.lengths.numel()


def as_rows(span: PrefillSpan, limit: int) -> bool:
    """Whether a span attends as rows of the paged kernel: at most ``limit`` (query, key) pairs."""
    return span.length * (span.past + span.length) <= limit


def paged_rows(spans: list[PrefillSpan]) -> PagedRows:
    """Adjacent ``spans`` as one run of rows: each token a query over its span's blocks."""
    width = max(span.blocks.numel() for span in spans)
    tables = torch.stack([F.pad(span.blocks, (0, width - span.blocks.numel())) for span in spans])
    device = tables.device
    counts = torch.tensor([span.length for span in spans], device=device)
    table_of = torch.arange(len(spans), device=device).repeat_interleave(counts)
    lengths = torch.cat(
        [torch.arange(span.past + 1, span.past + span.length + 1, device=device) for span in spans]
    )
    return PagedRows(spans[0].start, tables, table_of, lengths)


def pad_tables(tables: torch.Tensor, width: int) -> torch.Tensor:
    """Block tables (R, M) widened to (R, width) with block 0."""
    return F.pad(tables, (0, width - tables.shape[1]))


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


def group_prefills(spans: list[PrefillSpan], rows: int = 0) -> list[PrefillGroup | PagedRows]:
    """The step's spans in the order they lie: each run of adjacent spans of at most ``rows``
    (query, key) pairs (``row_limit``; 0 where the ops have no paged kernel) as one
    ``PagedRows``; of the others, each run of adjacent whole prompts (no cached past) of one
    length is one group, every other span a group of its own."""
    groups: list[PrefillGroup | PagedRows] = []
    run: list[PrefillSpan] = []
    in_rows = False  # whether ``run`` is a run of row spans

    def close() -> None:
        if not run:
            return
        first = run[0]
        if in_rows:
            groups.append(paged_rows(run))
        else:
            blocks = torch.stack([span.blocks for span in run])
            groups.append(PrefillGroup(first.start, len(run), first.length, first.past, blocks))
        run.clear()

    for span in spans:
        span_rows = as_rows(span, rows)
        adjacent = bool(run) and span.start == run[-1].start + run[-1].length
        if run and not (adjacent and span_rows == in_rows and (in_rows or _same_prompt(span, run[0]))):
            close()
        in_rows = span_rows
        run.append(span)
    close()
    return groups


def _same_prompt(span: PrefillSpan, first: PrefillSpan) -> bool:
    """Whether ``span`` joins ``first``'s batched SDPA group: both whole prompts of one length."""
    return (
        span.past == 0
        and first.past == 0
        and span.length == first.length
        and span.blocks.shape == first.blocks.shape
    )


def attend_prefills(
    q: torch.Tensor,
    groups: list[PrefillGroup | PagedRows],
    spec: AttentionSpec,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    paged: PagedAttention | None = None,
) -> None:
    """out's rows (T, H, d) of each group's spans: their queries (rows of q (T, H, d)) over their
    cached past and themselves; the layer's caches are (N, kvh, bs, d). ``paged``: the ops' paged
    kernel, which every ``PagedRows`` needs."""
    heads, dim = q.shape[1], q.shape[2]
    calls: list[PrefillGroup | PagedRows] = []
    for group in groups:
        if isinstance(group, PagedRows) or unmasked(spec, group.past):
            calls.append(group)
        else:
            calls.extend(group.spans())
    for group in calls:
        if isinstance(group, PagedRows):
            assert paged is not None, "rows of the paged kernel without one"
            rows = slice(group.start, group.start + group.count)
            paged(q[rows], k_cache, v_cache, group.tables, group.lengths, spec, out[rows], group.table_of)
            continue
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
