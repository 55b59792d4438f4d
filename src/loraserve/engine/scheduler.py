"""Iteration-level scheduling: who decodes and who is prefilled at the next step.

Running sequences always decode. Waiting ones queue per client (an adapter, or the base
model), first come first served within a client; admission serves the backlogged client with
the smallest virtual token counter (``fairness``), while a KV-cache slot and the step's prefill
token budget last. A request that cannot get a LoRA slot does not block the others: base
requests and pinned adapters (whose slots never free) go on. Requests that would lengthen the
hold on a busy unpinned slot wait behind it, so the slot frees and the most underserved
client gets it next. In merged-LoRA mode a batch holds one adapter: when the most underserved
client needs another, admission stops and the batch drains. Every resource a sequence takes
(KV slot, LoRA slot reference, adapter hold) is given back in ``finish``, on every path.
"""

from __future__ import annotations

import logging
from collections import deque

from loraserve.engine.adapter_cache import AdapterCache
from loraserve.engine.fairness import Client, VirtualTokenCounter
from loraserve.engine.sequence import Sequence, SequenceStatus

log = logging.getLogger("loraserve.engine")


class Scheduler:
    def __init__(self, kv_slots: int, max_batched_tokens: int, adapters: AdapterCache,
                 merged: bool) -> None:
        self.kv_slots = kv_slots
        self.free_slots = list(range(kv_slots))
        self.max_batched_tokens = max_batched_tokens
        self.adapters = adapters
        self.merged = merged
        self.queues: dict[Client, deque[Sequence]] = {}  # waiting, per client, oldest first
        self.running: list[Sequence] = []
        self.failed: list[Sequence] = []  # failed at admission; the engine reports them
        self.fairness = VirtualTokenCounter()

    @property
    def waiting(self) -> list[Sequence]:
        """Every waiting sequence, oldest first."""
        return sorted((s for q in self.queues.values() for s in q), key=lambda s: s.request_id)

    def has_work(self) -> bool:
        return bool(self.queues or self.running)

    def add(self, seq: Sequence) -> None:
        self.fairness.arrive(seq.client)
        self.queues.setdefault(seq.client, deque()).append(seq)

    def schedule(self) -> tuple[list[Sequence], list[Sequence]]:
        decodes = list(self.running)
        prefills: list[Sequence] = []
        budget = self.max_batched_tokens - len(decodes)
        skipped: set[Client] = set()  # clients whose head cannot be admitted this step
        slot_wanted = False  # a more underserved client waits for a LoRA slot
        while self.free_slots:
            seq = self._next_head(skipped)
            if seq is None:
                break
            client = seq.client
            need = seq.total_len - seq.cached
            if prefills and need > budget:
                break  # the step is full; a prompt alone may exceed the budget
            if self.merged and any(other.adapter != seq.adapter for other in decodes + prefills):
                break  # let the batch drain, then this client's adapter gets the next one
            admitted = self._take_lora_slot(seq, slot_wanted)
            if admitted is None:
                continue  # failed: reported by the engine
            if not admitted:
                skipped.add(client)
                slot_wanted = slot_wanted or not self.merged
                continue
            self._admit(seq, need)
            prefills.append(seq)
            budget -= need
        return decodes, prefills

    def _next_head(self, skipped: set[Client]) -> Sequence | None:
        """The oldest waiting request of the most underserved client not ``skipped``."""
        clients = sorted((c for c in self.queues if c not in skipped),
                         key=lambda c: self.queues[c][0].request_id)
        ordered = self.fairness.order(clients)
        return self.queues[ordered[0]][0] if ordered else None

    def _take_lora_slot(self, seq: Sequence, slot_wanted: bool) -> bool | None:
        """True: ready to run; False: must wait for a LoRA slot; None: failed (cannot load)."""
        if seq.adapter is None or self.merged:
            return True
        if slot_wanted and not self.adapters.pinned_key(seq.adapter):
            return False
        try:
            slot = self.adapters.acquire_key(seq.adapter)
        except Exception as exc:  # its weights cannot be read: this request fails, no other
            log.warning("adapter %s@%d cannot be loaded: %s", *seq.adapter, exc)
            self._fail(seq, f"adapter {seq.adapter[0]} cannot be loaded: {exc}")
            return None
        if slot is None:
            return False
        seq.lora_slot = slot
        return True

    def _admit(self, seq: Sequence, prompt_tokens: int) -> None:
        self._dequeue(seq)
        self.fairness.admitted(seq.client, prompt_tokens)
        self.free_slots.sort()
        seq.slot = self.free_slots.pop(0)  # lowest first: decode slots stay a short prefix
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def _dequeue(self, seq: Sequence) -> None:
        queue = self.queues[seq.client]
        queue.remove(seq)
        if not queue:
            del self.queues[seq.client]
            self.fairness.leave(seq.client)

    def _fail(self, seq: Sequence, message: str) -> None:
        seq.finish_reason, seq.error = "error", message
        self.finish(seq)
        self.failed.append(seq)

    def account(self, seqs: list[Sequence]) -> None:
        """One token generated for each of ``seqs``: charge their clients."""
        for seq in seqs:
            self.fairness.generated(seq.client)
        self.fairness.forget({*self.queues, *(s.client for s in self.running)})

    def finish(self, seq: Sequence) -> None:
        """Take ``seq`` out and give back everything it holds; safe to call twice."""
        if seq.status == SequenceStatus.FINISHED:
            return
        if seq.status == SequenceStatus.WAITING:
            self._dequeue(seq)
        elif seq in self.running:
            self.running.remove(seq)
        seq.status = SequenceStatus.FINISHED
        if seq.slot >= 0:
            self.free_slots.append(seq.slot)
            seq.slot = -1
        if seq.adapter is not None:
            if seq.lora_slot >= 0:
                self.adapters.release(seq.adapter)
                seq.lora_slot = -1
            self.adapters.unhold(seq.adapter)

    def find(self, request_id: int) -> Sequence | None:
        for seq in [*self.running, *(s for q in self.queues.values() for s in q)]:
            if seq.request_id == request_id:
                return seq
        return None

    def abort(self, request_id: int) -> Sequence | None:
        seq = self.find(request_id)
        if seq is not None:
            seq.finish_reason = seq.finish_reason or "aborted"
            self.finish(seq)
        return seq
