"""Weights moved into a huge-page mapping keep their values, dtypes, shapes and sharing (a tied
head is the embedding, before and after), and stay writable; switched off, nothing moves."""

from __future__ import annotations

import pytest
import torch

from loraserve.model.huge_pages import huge_pages_available, move_to_huge_pages


@pytest.mark.skipif(not huge_pages_available(), reason="transparent huge pages are off on this machine")
def test_moved_weights_keep_values_and_sharing():
    embed = torch.randn(300, 64)
    tied = embed  # the head of a tied model is the same tensor
    norm = torch.randn(64).to(torch.bfloat16)
    before = [embed.clone(), norm.clone()]
    old = embed.data_ptr()
    moved = move_to_huge_pages([embed, norm, tied])
    assert moved >= embed.nbytes + norm.nbytes
    assert embed.data_ptr() != old and tied is embed
    assert torch.equal(embed, before[0]) and torch.equal(norm, before[1])
    assert norm.dtype is torch.bfloat16 and embed.shape == (300, 64)
    assert embed.data_ptr() % 64 == 0 and norm.data_ptr() % 64 == 0
    embed.add_(1)  # still an ordinary, writable tensor
    assert torch.equal(tied, before[0] + 1)


def test_switched_off_nothing_moves(monkeypatch):
    monkeypatch.setenv("LORASERVE_HUGE_PAGES", "0")
    weight = torch.randn(8, 8)
    old = weight.data_ptr()
    assert move_to_huge_pages([weight]) == 0
    assert weight.data_ptr() == old
