"""Iteration-level scheduling over a paged KV cache: which sequences run at the next step, and
how many of their tokens.

Every step has a token budget (``max_num_batched_tokens``). Running sequences come first,
decoding ones (one token each) before those still prefilling, which get the rest of the
budget as a chunk of their prompt: a long prompt is spread over steps while the others keep
producing tokens (chunked prefill). A running sequence that needs a block when the pool is
empty preempts the most recently admitted one (its blocks freed, its LoRA slot reference
released; it goes back to the head of its queue and is recomputed later, as vLLM V1 does);
no admission happens in a step that preempted.

Waiting sequences queue per client (an adapter, or the base model), first come first served
within a client; admission serves the backlogged client with the smallest virtual token
counter (``fairness``) while the running set, the budget and free blocks last. A new sequence
first takes the cached blocks its tokens start with (prefix caching, ``block_manager``). A
request that cannot get a LoRA slot does not block the others: base requests and pinned
adapters (whose slots never free) go on; requests that would lengthen the hold on a busy
unpinned slot wait behind it. In merged-LoRA mode a batch holds one adapter. Every resource a
sequence takes (blocks, LoRA slot reference, adapter hold, structured-output matcher) is given
back in ``finish``; preemption keeps the matcher (the tokens it followed stay).
"""

from __future__ import annotations

import logging
from collections import deque

from loraserve.engine.adapter_cache import AdapterCache
from loraserve.engine.adapter_prefetch import AdapterPrefetcher
from loraserve.engine.block_manager import BlockManager
from loraserve.engine.fairness import Client, VirtualTokenCounter
from loraserve.engine.sequence import Sequence, SequenceStatus
from loraserve.wire.messages import FinishReason

log = logging.getLogger("loraserve.engine")
READING = object()  # an admission outcome: the adapter's weights are being read off-thread


class Scheduler:
    def __init__(
        self,
        max_num_seqs: int,
        max_batched_tokens: int,
        adapters: AdapterCache,
        merged: bool,
        blocks: BlockManager,
        prefetch: AdapterPrefetcher | None = None,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.adapters = adapters
        self.merged = merged
        self.blocks = blocks
        self.prefetch = prefetch  # None: adapters are read on the engine thread, as they are admitted
        self.queues: dict[Client, deque[Sequence]] = {}  # waiting, per client, oldest first
        self.running: list[Sequence] = []  # in admission order
        self.failed: list[Sequence] = []  # failed at admission; the engine reports them
        self.fairness = VirtualTokenCounter()
        self.preemptions = 0

    @property
    def waiting(self) -> list[Sequence]:
        """Every waiting sequence, oldest first."""
        return sorted((s for q in self.queues.values() for s in q), key=lambda s: s.request_id)

    def has_work(self) -> bool:
        return bool(self.queues or self.running)

    def add(self, seq: Sequence) -> None:
        self.fairness.arrive(seq.client)
        self.queues.setdefault(seq.client, deque()).append(seq)

    def schedule(self) -> list[Sequence]:
        """The step's sequences, each with ``new_tokens`` set; decodes (one token) first."""
        budget = self.max_batched_tokens
        pending = sorted(self.running, key=lambda s: s.total_len - s.cached > 1)  # decodes first
        scheduled: list[Sequence] = []
        preempted = False
        while pending and budget > 0:
            seq = pending.pop(0)
            tokens = min(seq.total_len - seq.cached, budget)
            while not self.blocks.allocate(seq, seq.cached + tokens):
                preempted = True
                if not pending:  # nobody left to make room: it steps back itself
                    self.preempt(seq)
                    break
                victim = max(pending, key=self.running.index)  # the most recently admitted
                pending.remove(victim)
                self.preempt(victim)
            else:
                self._schedule(seq, tokens)
                scheduled.append(seq)
                budget -= tokens
        if not preempted:
            budget = self._admit_waiting(scheduled, budget)
        return sorted(scheduled, key=lambda s: s.new_tokens > 1)

    def _schedule(self, seq: Sequence, tokens: int) -> None:
        seq.new_tokens = tokens
        self.blocks.cache_full_blocks(seq, seq.cached + tokens)

    def _admit_waiting(self, scheduled: list[Sequence], budget: int) -> int:
        skipped: set[Client] = set()  # clients whose head cannot be admitted this step
        slot_wanted = False  # a more underserved client waits for a LoRA slot
        while budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self._next_head(skipped)
            if seq is None:
                break
            if self.merged and any(other.adapter != seq.adapter for other in self.running):
                break  # let the batch drain, then this client's adapter gets the next one
            admitted = self._take_lora_slot(seq, slot_wanted)
            if admitted is None:
                continue  # failed: reported by the engine
            if admitted is READING:  # its weights are being read off-thread: the others go on
                skipped.add(seq.client)
                continue
            if not admitted:
                skipped.add(seq.client)
                slot_wanted = slot_wanted or not self.merged
                continue
            self.blocks.match_prefix(seq)
            tokens = min(seq.total_len - seq.cached, budget)
            if not self.blocks.allocate(seq, seq.cached + tokens):
                self.blocks.free_sequence(seq)  # the pool is short: wait for blocks
                self._release_lora_slot(seq)
                break
            self._admit(seq, tokens)
            self._schedule(seq, tokens)
            scheduled.append(seq)
            budget -= tokens
        return budget

    def _next_head(self, skipped: set[Client]) -> Sequence | None:
        """The oldest waiting request of the most underserved client not ``skipped``."""
        clients = sorted(
            (c for c in self.queues if c not in skipped), key=lambda c: self.queues[c][0].request_id
        )
        ordered = self.fairness.order(clients)
        return self.queues[ordered[0]][0] if ordered else None

    def _take_lora_slot(self, seq: Sequence, slot_wanted: bool) -> bool | object | None:
        """True: ready to run; False: must wait for a LoRA slot; ``READING``: its weights are
        being read from disk (``adapter_prefetch``); None: failed (cannot load)."""
        if seq.adapter is None or self.merged:
            return True
        if slot_wanted and not self.adapters.pinned_key(seq.adapter):
            return False
        if self.prefetch is not None and not self.prefetch.ready(seq.adapter):
            error = self.prefetch.failure(seq.adapter)
            if error is None:
                return READING
            self._fail(seq, f"adapter {seq.adapter[0]} cannot be loaded: {error}")
            if not self.adapters.in_use(seq.adapter):  # its last waiting request: a later one retries
                self.prefetch.forget(seq.adapter)
            return None
        try:
            slot = self.adapters.acquire_key(seq.adapter)
        except Exception as exc:  # its weights cannot be read: this request fails, no other
            log.warning("adapter %s@%s cannot be loaded: %s", *seq.adapter, exc)
            self._fail(seq, f"adapter {seq.adapter[0]} cannot be loaded: {exc}")
            return None
        if slot is None:
            return False
        seq.lora_slot = slot
        return True

    def _release_lora_slot(self, seq: Sequence) -> None:
        if seq.adapter is not None and seq.lora_slot >= 0:
            self.adapters.release(seq.adapter)
            seq.lora_slot = -1

    def _admit(self, seq: Sequence, tokens: int) -> None:
        self._dequeue(seq)
        if not seq.preemptions:  # a resumed request is not charged twice for its prompt
            self.fairness.admitted(seq.client, seq.total_len)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and LoRA slot; it waits at the head of its queue
        and is recomputed (prompt and the tokens it generated) when admitted again."""
        self.running.remove(seq)
        self.blocks.free_sequence(seq)
        self._release_lora_slot(seq)
        seq.status = SequenceStatus.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.fairness.arrive(seq.client)
        self.queues.setdefault(seq.client, deque()).appendleft(seq)

    def _dequeue(self, seq: Sequence) -> None:
        queue = self.queues[seq.client]
        queue.remove(seq)
        if not queue:
            del self.queues[seq.client]
            self.fairness.leave(seq.client)

    def _fail(self, seq: Sequence, message: str) -> None:
        seq.finish_reason, seq.error = FinishReason.ERROR, message
        self.finish(seq)
        self.failed.append(seq)

    def postprocess(self, seqs: list[Sequence]) -> list[Sequence]:
        """The step ran: advance each sequence's cached length; return those that now have
        logits to sample (their whole input is cached), charging their clients a token."""
        sampled = []
        for seq in seqs:
            seq.cached += seq.new_tokens
            seq.new_tokens = 0
            if seq.cached == seq.total_len:
                sampled.append(seq)
                self.fairness.generated(seq.client)
        self.fairness.forget({*self.queues, *(s.client for s in self.running)})
        return sampled

    def finish(self, seq: Sequence, discard: bool = False) -> list[int]:
        """Take ``seq`` out and give back everything it holds; safe to call twice. ``discard``:
        its KV may be garbage (it failed); returns the blocks to scrub."""
        if seq.status == SequenceStatus.FINISHED:
            return []
        if seq.status == SequenceStatus.WAITING:
            self._dequeue(seq)
        elif seq in self.running:
            self.running.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.new_tokens = 0
        seq.matcher = None  # a structured-output matcher's memory goes with it
        released = (self.blocks.discard_sequence if discard else self.blocks.free_sequence)(seq)
        if seq.adapter is not None:
            self._release_lora_slot(seq)
            self.adapters.unhold(seq.adapter)
        return released if discard else []

    def find(self, request_id: int) -> Sequence | None:
        for seq in [*self.running, *(s for q in self.queues.values() for s in q)]:
            if seq.request_id == request_id:
                return seq
        return None

    def abort(self, request_id: int) -> Sequence | None:
        seq = self.find(request_id)
        if seq is not None:
            seq.finish_reason = seq.finish_reason or FinishReason.ABORT
            self.finish(seq)
        return seq
