"""The paged KV cache's bookkeeping: one pool of fixed-size blocks, a block table per sequence,
and prefix caching of full blocks.

Plain Python over block ids (the tensors live in the runner), so its rules are tested alone.
A full block is cached under a hash of (namespace, the tokens of every block before it, its own
tokens); the namespace is the adapter version the KV was computed with (``None``: the base
model), block by block (an activated LoRA's blocks before its activation are base blocks).
Versions are never reused, so re-registering or updating an adapter name can never hit
blocks computed with the old weights, and two adapters never share a block (the bug class of
vLLM #30931). A hit also compares the stored token ids: a hash collision cannot alias blocks.
Blocks whose last user left stay cached, in a free list ordered by release: allocation takes
the least recently released first (LRU eviction of unused cached blocks). Block 0 is never
handed out: it pads block tables, so padded reads see zeros, never another request's data.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

NULL_BLOCK = 0


class PagedSequence(Protocol):
    """What the block manager reads and writes on a sequence."""

    block_table: list[int]
    block_hashes: list[bytes]
    cached: int  # tokens whose KV is in the cache (or will be, at the end of the running step)

    @property
    def all_ids(self) -> list[int]: ...

    @property
    def scores_prompt(self) -> bool: ...

    def block_namespace(self, index: int, block_size: int) -> Hashable: ...


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None
    token_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class PrefixCacheStats:
    queried_tokens: int = 0  # prompt tokens looked up at admission
    hit_tokens: int = 0  # of which found cached

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


def block_hash(previous: bytes, namespace: Hashable, tokens: tuple[int, ...]) -> bytes:
    """A chained SHA-256 (not Python's ``hash``: a client must not be able to forge a collision)."""
    digest = hashlib.sha256(previous)
    digest.update(repr(namespace).encode())
    digest.update(b"\0")
    digest.update(b",".join(str(t).encode() for t in tokens))
    return digest.digest()


@dataclass
class BlockManager:
    num_blocks: int  # including the null block
    block_size: int
    enable_prefix_caching: bool = True
    blocks: list[Block] = field(init=False)
    free: OrderedDict[int, None] = field(init=False)  # ref_count 0, least recently released first
    cached: dict[bytes, int] = field(init=False)  # hash → block id
    stats: PrefixCacheStats = field(init=False)

    def __post_init__(self) -> None:
        if self.num_blocks < 2 or self.block_size < 1:
            raise ValueError("the KV cache needs at least 2 blocks of at least 1 token")
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free = OrderedDict((i, None) for i in range(1, self.num_blocks))
        self.cached = {}
        self.stats = PrefixCacheStats()

    @property
    def usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def free_blocks(self) -> int:
        return len(self.free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # -- admission --------------------------------------------------------------------------
    def match_prefix(self, seq: PagedSequence) -> None:
        """Give a new (or resumed) sequence the cached blocks its tokens start with. At least one
        token is left to compute: its logits give the next token."""
        tokens = seq.all_ids
        self.stats.queried_tokens += len(tokens)
        if not self.enable_prefix_caching or seq.scores_prompt:
            return
        previous = b""
        for index in range((len(tokens) - 1) // self.block_size):
            chunk = tuple(tokens[index * self.block_size : (index + 1) * self.block_size])
            digest = block_hash(previous, seq.block_namespace(index, self.block_size), chunk)
            block_id = self.cached.get(digest)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            self._take(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(digest)
            previous = digest
        seq.cached = len(seq.block_table) * self.block_size
        self.stats.hit_tokens += seq.cached

    def can_allocate(self, seq: PagedSequence, tokens: int) -> int:
        """New blocks ``seq`` needs to hold its first ``tokens`` tokens."""
        return max(0, self.blocks_for(tokens) - len(seq.block_table))

    def allocate(self, seq: PagedSequence, tokens: int) -> bool:
        """Grow ``seq``'s block table to hold ``tokens`` tokens; False (nothing taken) if the pool
        is short."""
        need = self.can_allocate(seq, tokens)
        if need > len(self.free):
            return False
        for _ in range(need):
            block_id = next(iter(self.free))
            self._evict(block_id)
            self._take(block_id)
            seq.block_table.append(block_id)
        return True

    def cache_full_blocks(self, seq: PagedSequence, computed: int) -> None:
        """Publish the blocks that are full once the first ``computed`` tokens are in the cache.
        Called when the step that writes them is scheduled: a sequence admitted later in the same
        step may read them, since every layer writes its KV before any attention reads it."""
        if not self.enable_prefix_caching:
            return
        tokens = seq.all_ids
        for index in range(len(seq.block_hashes), computed // self.block_size):
            chunk = tuple(tokens[index * self.block_size : (index + 1) * self.block_size])
            previous = seq.block_hashes[-1] if seq.block_hashes else b""
            digest = block_hash(previous, seq.block_namespace(index, self.block_size), chunk)
            seq.block_hashes.append(digest)
            block = self.blocks[seq.block_table[index]]
            if block.hash is None and digest not in self.cached:
                block.hash, block.token_ids = digest, chunk
                self.cached[digest] = block.block_id

    # -- release ----------------------------------------------------------------------------
    def free_sequence(self, seq: PagedSequence) -> list[int]:
        """Give back ``seq``'s blocks (cached ones stay findable until evicted); returns the ids
        whose last user it was."""
        released = []
        for block_id in reversed(seq.block_table):  # the tail is evicted first: it is rarest
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                released.append(block_id)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.cached = 0
        return released

    def discard_sequence(self, seq: PagedSequence) -> list[int]:
        """Free ``seq``'s blocks and forget the cached content of those only it used: after a
        failure their KV may be garbage. Returns those ids (the caller zeroes them)."""
        released = self.free_sequence(seq)
        for block_id in released:
            self._evict(block_id)
        return released

    # -- internals --------------------------------------------------------------------------
    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.token_ids = None, ()
