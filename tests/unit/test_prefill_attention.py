"""Prefill attention in groups of equal spans: which spans share a call, and that sharing one
changes no bit of any sequence's output."""

from __future__ import annotations

import pytest
import torch

from loraserve.model.batch import PrefillSpan
from loraserve.model.layer_ops import AttentionSpec
from loraserve.model.prefill_attention import PrefillGroup, attend_prefills, group_prefills

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
        _check_against_reference(q, k_cache, v_cache, grouped, span, spec, dtype)


def _check_against_reference(q, k_cache, v_cache, out, span, spec, dtype):
    """out's rows of ``span`` = softmax(q k^T * scale) v over its visible positions, in fp32."""
    kv_heads, dim = k_cache.shape[1], k_cache.shape[3]
    total = span.past + span.length
    keys = k_cache[span.blocks].transpose(0, 1).reshape(kv_heads, -1, dim)[:, :total]
    values = v_cache[span.blocks].transpose(0, 1).reshape(kv_heads, -1, dim)[:, :total]
    query = q[span.start : span.start + span.length].transpose(0, 1).float()  # (H, n, d)
    group = q.shape[1] // kv_heads
    keys, values = keys.float().repeat_interleave(group, 0), values.float().repeat_interleave(group, 0)
    scores = query @ keys.transpose(1, 2) * spec.scale
    if spec.softcap:
        scores = torch.tanh(scores / spec.softcap) * spec.softcap
    positions = torch.arange(span.past, total)[:, None]
    columns = torch.arange(total)[None, :]
    visible = (columns <= positions) & (columns > positions - (spec.window or total + 1))
    expected = (scores.masked_fill(~visible, float("-inf")).softmax(-1) @ values).transpose(0, 1)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    actual = out[span.start : span.start + span.length].float()
    assert torch.allclose(actual, expected, atol=tolerance, rtol=tolerance)
