"""The paged KV cache's bookkeeping: prefix caching by adapter version, LRU reuse, release."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from loraserve.engine.block_manager import NULL_BLOCK, BlockManager


@dataclass(eq=False)
class Seq:
    all_ids: list[int]
    cache_namespace: object = None
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    cached: int = 0
    scores_prompt: bool = False

    def block_namespace(self, index: int, block_size: int) -> object:
        return self.cache_namespace


def _computed(manager: BlockManager, seq: Seq) -> Seq:
    """Admit ``seq`` and "compute" its whole input, as one prefill step does."""
    manager.match_prefix(seq)
    assert manager.allocate(seq, len(seq.all_ids))
    manager.cache_full_blocks(seq, len(seq.all_ids))
    seq.cached = len(seq.all_ids)
    return seq


def test_a_shared_prefix_is_reused_and_the_last_token_is_always_computed():
    manager = BlockManager(16, 4)
    first = _computed(manager, Seq(list(range(10))))  # blocks [0-3] [4-7] full, [8-9] partial
    second = Seq([*list(range(8)), 99, 98])
    manager.match_prefix(second)
    assert second.cached == 8 and second.block_table == first.block_table[:2]
    exact = Seq(list(range(8)))  # all of it cached: the last block is recomputed for its logits
    manager.match_prefix(exact)
    assert exact.cached == 4
    assert manager.stats.hit_tokens == 12 and manager.stats.queried_tokens == 28


def test_a_sequence_that_scores_its_prompt_computes_it_but_still_stores_it():
    """Prompt log-probs (echo) need every position's logits: cached blocks have none."""
    manager = BlockManager(16, 4)
    _computed(manager, Seq(list(range(10))))
    scoring = Seq(list(range(10)), scores_prompt=True)
    manager.match_prefix(scoring)
    assert scoring.cached == 0 and scoring.block_table == []
    _computed(manager, Seq([7, *range(11)], scores_prompt=True))
    later = Seq([7, *range(11)])
    manager.match_prefix(later)
    assert later.cached == 8


@pytest.mark.parametrize("other", [("lora", 2), ("other", 1), None])
def test_namespaces_never_share_blocks(other):
    manager = BlockManager(16, 4)
    _computed(manager, Seq(list(range(12)), ("lora", 1)))
    probe = Seq(list(range(12)), other)
    manager.match_prefix(probe)
    assert probe.cached == 0 and probe.block_table == []


def test_freed_blocks_stay_cached_until_reused_least_recently_released_first():
    manager = BlockManager(5, 2)  # 4 usable blocks
    old = _computed(manager, Seq([1, 2, 3, 4]))
    manager.free_sequence(old)
    assert manager.free_blocks == 4 and len(manager.cached) == 2
    taker = Seq([7, 8])
    assert manager.allocate(taker, 2)  # takes a never-used block first
    assert set(taker.block_table).isdisjoint(manager.cached.values())
    hit = Seq([1, 2, 3, 4, 5])
    manager.match_prefix(hit)
    assert hit.cached == 4  # both cached blocks are still there
    assert NULL_BLOCK not in hit.block_table + taker.block_table


def test_eviction_drops_the_hash_so_a_reused_block_is_never_hit():
    manager = BlockManager(3, 2)  # 2 usable blocks
    old = _computed(manager, Seq([1, 2, 3]))
    manager.free_sequence(old)
    filler = Seq([9, 9, 9, 9])
    assert manager.allocate(filler, 4)  # needs both blocks: the cached one is evicted
    probe = Seq([1, 2, 3])
    manager.match_prefix(probe)
    assert probe.cached == 0


def test_allocation_is_all_or_nothing_and_release_returns_every_block():
    manager = BlockManager(4, 2)
    seq = Seq(list(range(5)))
    assert not manager.allocate(seq, 8)  # 4 blocks wanted, 3 usable
    assert seq.block_table == [] and manager.free_blocks == 3
    assert manager.allocate(seq, 5)
    shared = Seq(list(range(5)))
    manager.cache_full_blocks(seq, 4)
    manager.match_prefix(shared)
    assert manager.blocks[shared.block_table[0]].ref_count == 2
    manager.free_sequence(seq)
    manager.free_sequence(shared)
    assert manager.free_blocks == 3 and all(b.ref_count == 0 for b in manager.blocks)


def test_discard_forgets_only_blocks_nobody_else_uses():
    manager = BlockManager(8, 2)
    keeper = _computed(manager, Seq([1, 2, 3, 4, 5]))
    failing = Seq([1, 2, 3, 4, 6])
    manager.match_prefix(failing)
    assert manager.allocate(failing, 5)
    manager.cache_full_blocks(failing, 5)
    scrub = manager.discard_sequence(failing)
    assert scrub == [b for b in scrub if b not in keeper.block_table] and len(scrub) == 1
    probe = Seq([1, 2, 3, 4, 7])
    manager.match_prefix(probe)
    assert probe.cached == 4  # the keeper's blocks are still cached


def test_identical_hash_with_different_tokens_is_not_a_hit(monkeypatch):
    import loraserve.engine.block_manager as module

    monkeypatch.setattr(module, "block_hash", lambda previous, namespace, tokens: b"same")
    manager = BlockManager(8, 2)
    _computed(manager, Seq([1, 2, 3]))
    probe = Seq([5, 6, 7])
    manager.match_prefix(probe)
    assert probe.cached == 0
