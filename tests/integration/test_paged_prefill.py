"""Short prompt spans attend as rows of the native paged (decode) kernel: each token over its past
and the tokens before it, read in place. Against attention written out in fp32 on causal,
windowed and soft-capped layers, GQA, beside spans that still take SDPA in the same step."""

from __future__ import annotations

import pytest
import torch

from loraserve.model.batch import PrefillSpan
from loraserve.model.layer_ops import AttentionSpec, NativeOps, select_ops
from loraserve.model.prefill_attention import (
    PagedRows,
    PrefillGroup,
    attend_prefills,
    group_prefills,
    row_limit,
)
from loraserve.testing.reference import assert_span_attention

BLOCK = 4
SPECS = [AttentionSpec(0.25), AttentionSpec(0.25, window=3), AttentionSpec(0.25, softcap=5.0)]


def _ops(dtype: torch.dtype) -> NativeOps:
    ops = select_ops(dtype, torch.device("cpu"), 1e-6)
    if not isinstance(ops, NativeOps):
        pytest.skip("the native kernels could not be built here")
    return ops


def _step(
    shapes: list[tuple[int, int]], dtype: torch.dtype, heads: int = 6, kv_heads: int = 2, dim: int = 16
):
    """Adjacent spans of (length, past) on scattered blocks, caches, and q as the native stack
    passes it (the query columns of the fused qkv rows, not contiguous)."""
    generator = torch.Generator().manual_seed(5)
    needed = [-(-(past + length) // BLOCK) for length, past in shapes]
    order = torch.randperm(sum(needed) + 1, generator=generator)
    order = order[order != 0]  # block 0 pads the tables: keep data out of it to catch a read past the end
    spans, start, used = [], 0, 0
    for (length, past), count in zip(shapes, needed):
        spans.append(PrefillSpan(start, length, past, order[used : used + count]))
        start, used = start + length, used + count
    k_cache = torch.randn(sum(needed) + 1, kv_heads, BLOCK, dim, generator=generator).to(dtype)
    v_cache = torch.randn(sum(needed) + 1, kv_heads, BLOCK, dim, generator=generator).to(dtype)
    k_cache[0], v_cache[0] = float("nan"), float("nan")
    fused = torch.randn(start, (heads + 2 * kv_heads) * dim, generator=generator).to(dtype)
    return spans, k_cache, v_cache, fused[:, : heads * dim].view(start, heads, dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS, ids=["causal", "window", "softcap"])
def test_prompt_tokens_as_rows_equal_attention_written_out(dtype, spec):
    ops = _ops(dtype)
    spans, k_cache, v_cache, q = _step([(7, 0), (7, 0), (3, 5), (6, 0), (2, 9), (5, 2)], dtype)
    groups = group_prefills(spans, row_limit(16))
    assert len(groups) == 1 and isinstance(groups[0], PagedRows) and groups[0].count == q.shape[0]
    out = torch.full_like(q, float("nan"))
    attend_prefills(q, groups, spec, k_cache, v_cache, out, ops.paged_attention)
    assert not out.isnan().any()
    for span in spans:
        assert_span_attention(q, k_cache, v_cache, out, span, spec)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS, ids=["causal", "window", "softcap"])
def test_rows_and_sdpa_groups_share_a_step(dtype, spec):
    """With a limit that sends the 7-token prompts to SDPA: rows, a batched group, rows."""
    ops = _ops(dtype)
    spans, k_cache, v_cache, q = _step([(4, 0), (3, 2), (7, 0), (7, 0), (3, 5), (2, 0)], dtype)
    groups = group_prefills(spans, 40)
    assert [type(g) for g in groups] == [PagedRows, PrefillGroup, PagedRows]
    out = torch.full_like(q, float("nan"))
    attend_prefills(q, groups, spec, k_cache, v_cache, out, ops.paged_attention)
    assert not out.isnan().any()
    for span in spans:
        assert_span_attention(q, k_cache, v_cache, out, span, spec)
