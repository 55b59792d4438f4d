"""Prefill attention in groups of equal spans: which spans share a call, and that sharing one
changes no bit of any sequence's output."""

from __future__ import annotations

import pytest
import torch

from loraserve.model.batch import PrefillSpan, StepBatch
from loraserve.model.decoder import stack_rows
from loraserve.model.layer_ops import AttentionSpec
from loraserve.model.prefill_attention import (
    PagedRows,
    PrefillGroup,
    attend_prefills,
    group_prefills,
    row_limit,
)
from loraserve.testing.reference import assert_span_attention

BLOCK = 4


def _spans(shapes: list[tuple[int, int]], first_block: int = 1) -> list[PrefillSpan]:
    """Adjacent spans of (length, past), each on its own run of blocks after ``first_block``."""
    spans, start, block = [], 0, first_block
    for length, past in shapes:
        count = -(-(past + length) // BLOCK)
        spans.append(PrefillSpan(start, length, past, torch.arange(block, block + count)))
        start, block = start + length, block + count
    return spans


def test_adjacent_whole_prompts_of_one_length_share_a_group():
    spans = _spans([(5, 0), (5, 0), (5, 0), (3, 0), (3, 6), (3, 6), (5, 0), (5, 0)])
    groups = group_prefills(spans)
    assert [(g.start, g.count, g.length, g.past) for g in groups] == [
        (0, 3, 5, 0),
        (15, 1, 3, 0),
        (18, 1, 3, 6),  # a cached past: masked attention, span by span
        (21, 1, 3, 6),
        (24, 2, 5, 0),
    ]
    assert torch.equal(groups[0].blocks, torch.stack([s.blocks for s in spans[:3]]))
    assert group_prefills([]) == []


def test_spans_that_are_not_adjacent_stay_apart():
    first, second = _spans([(4, 0), (4, 0)])
    second.start += 1  # a decode row between them
    assert [g.count for g in group_prefills([first, second])] == [1, 1]


def test_short_spans_run_as_rows_of_the_paged_kernel_where_the_ops_have_one():
    # (length, past) up to 40 (query, key) pairs as rows: 16 and 16: rows; 49 each: a batched
    # group; 24, 4: rows
    spans = _spans([(4, 0), (4, 0), (7, 0), (7, 0), (3, 5), (2, 0)])
    groups = group_prefills(spans, 40)
    assert [type(g).__name__ for g in groups] == ["PagedRows", "PrefillGroup", "PagedRows"]
    first, middle, last = groups
    assert isinstance(first, PagedRows) and isinstance(middle, PrefillGroup) and isinstance(last, PagedRows)
    assert (first.start, first.count, middle.start, middle.count) == (0, 8, 8, 2)
    assert (last.start, last.count) == (22, 5)
    # each token: its span's table of blocks (padded with block 0), its own position + 1 keys
    assert first.lengths.tolist() == [1, 2, 3, 4] * 2
    assert torch.equal(first.tables, torch.stack([spans[0].blocks, spans[1].blocks]))
    assert first.table_of.tolist() == [0] * 4 + [1] * 4
    assert last.lengths.tolist() == [6, 7, 8, 1, 2]
    padded = torch.cat([spans[5].blocks, torch.zeros(1, dtype=torch.long)])
    assert torch.equal(last.tables, torch.stack([spans[4].blocks, padded]))
    assert last.table_of.tolist() == [0, 0, 0, 1, 1]
    # without a paged kernel (limit 0), the same spans group as before
    assert all(isinstance(g, PrefillGroup) for g in group_prefills(spans))
    # the limit grows as the head shrinks: the same work a span at every head size
    assert row_limit(64) == 2 * row_limit(128) and row_limit(64) >= 512 * 512


def test_which_path_a_span_takes_depends_on_the_span_alone():
    """A span takes rows or SDPA by its own length and past, whatever shares its step (so its
    bits do not depend on its neighbours)."""
    small, large = (8, 8), (700, 0)  # 128 and 490,000 (query, key) pairs
    limit = row_limit(64)
    assert small[0] * (small[0] + small[1]) <= limit < large[0] * (large[0] + large[1])
    for neighbours in ([], [small], [large], [small, large], [large, large]):
        spans = _spans([*neighbours, small, *neighbours, large])
        groups = group_prefills(spans, limit)
        paths = [type(_group_of(groups, span)).__name__ for span in spans]
        expected = ["PagedRows" if (span.length, span.past) == small else "PrefillGroup" for span in spans]
        assert paths == expected, neighbours


def _group_of(groups: list[PrefillGroup | PagedRows], span: PrefillSpan) -> PrefillGroup | PagedRows:
    """The group whose rows hold the span's first token."""
    for group in groups:
        rows = group.count if isinstance(group, PagedRows) else group.count * group.length
        if group.start <= span.start < group.start + rows:
            return group
    raise AssertionError(f"no group holds the span at {span.start}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "spec",
    [AttentionSpec(0.25), AttentionSpec(0.25, window=3), AttentionSpec(0.25, softcap=5.0)],
    ids=["causal", "window", "softcap"],
)
def test_a_group_gives_each_sequence_the_bits_of_its_own_call(dtype, spec):
    heads, kv_heads, dim = 6, 2, 16
    spans = _spans([(7, 0)] * 5 + [(3, 5)] * 3 + [(6, 0)] * 2)
    tokens = sum(span.length for span in spans)
    blocks = int(max(span.blocks.max() for span in spans)) + 1
    generator = torch.Generator().manual_seed(3)
    k_cache = torch.randn(blocks, kv_heads, BLOCK, dim, generator=generator).to(dtype)
    v_cache = torch.randn(blocks, kv_heads, BLOCK, dim, generator=generator).to(dtype)
    # q as the native stack passes it: the query columns of the fused qkv rows, not contiguous
    fused = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=generator).to(dtype)
    q = fused[:, : heads * dim].view(tokens, heads, dim)

    grouped, alone = torch.full_like(q, float("nan")), torch.full_like(q, float("nan"))
    groups = group_prefills(spans)
    assert [g.count for g in groups] == [5, 1, 1, 1, 2]
    attend_prefills(q, groups, spec, k_cache, v_cache, grouped)
    singles = [PrefillGroup(s.start, 1, s.length, s.past, s.blocks[None]) for s in spans]
    assert [one.start for group in groups for one in group.spans()] == [s.start for s in spans]
    attend_prefills(q, singles, spec, k_cache, v_cache, alone)

    assert not grouped.isnan().any()
    assert torch.equal(grouped, alone)
    # and a grouped span and one with a cached past against attention written out
    for span in (spans[1], spans[5]):
        assert_span_attention(q, k_cache, v_cache, grouped, span, spec)


def test_the_stack_attends_the_decodes_and_the_rows_after_them_by_one_table_a_sequence():
    """Rows join the decodes in the stack's own attention with one block table per span, not
    one per token: a burst of short prompts beside a long decode costs a table a sequence."""
    spans = _spans([(6, 0), (5, 3), (300, 0), (2, 0)], first_block=40)
    for span in spans:
        span.start += 3  # after three decodes
    decode_tables = torch.arange(3 * 30).view(3, 30)  # long sequences: 30 blocks each
    batch = StepBatch(
        input_ids=torch.zeros(316, dtype=torch.long),
        positions=torch.zeros(316, dtype=torch.long),
        slot_mapping=torch.zeros(316, dtype=torch.long),
        decode_tables=decode_tables,
        decode_lengths=torch.tensor([100, 110, 120]),
        decode_max_len=120,
        block_size=BLOCK,
        prefills=spans,
        logits_index=torch.zeros(4, dtype=torch.long),
    )
    rows, rest = stack_rows(batch, group_prefills(spans, 1000))
    assert rows.tables.shape == (5, 30)  # three decodes' tables, then the two spans'
    assert torch.equal(rows.tables[:3], decode_tables)
    assert rows.table_of is not None and rows.table_of.tolist() == [0, 1, 2] + [3] * 6 + [4] * 5
    assert rows.lengths.tolist() == [100, 110, 120, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8]
    assert [type(g) for g in rest] == [PrefillGroup, PagedRows]  # the long prompt, then rows
    # a step of decodes only keeps its tables as they are
    alone, left = stack_rows(batch, [])
    assert alone.tables is decode_tables and alone.table_of is None and left == []
