"""Iteration-level scheduling: who decodes and who is prefilled at the next step.

Running sequences always decode. Waiting ones join, first come first served, while a KV-cache
slot, the step's prefill token budget and (for adapter requests) a resident LoRA slot are
available; otherwise they wait — never dropped. In merged-LoRA mode a batch holds one adapter.
"""

from __future__ import annotations

from collections import deque

from loraserve.engine.adapter_cache import AdapterCache
from loraserve.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, kv_slots: int, max_batched_tokens: int, adapters: AdapterCache,
                 merged: bool) -> None:
        self.free_slots = list(range(kv_slots))
        self.max_batched_tokens = max_batched_tokens
        self.adapters = adapters
        self.merged = merged
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> tuple[list[Sequence], list[Sequence]]:
        decodes = list(self.running)
        prefills: list[Sequence] = []
        budget = self.max_batched_tokens - len(decodes)
        while self.waiting and self.free_slots:
            seq = self.waiting[0]
            need = seq.total_len - seq.cached
            if prefills and need > budget:
                break
            if self.merged and not self._fits_merged(seq, decodes + prefills):
                break
            if seq.adapter is not None:
                lora_slot = self.adapters.acquire_key(seq.adapter)
                if lora_slot is None:
                    break  # every resident slot is held by running requests: wait
                seq.lora_slot = lora_slot
            self.waiting.popleft()
            self.free_slots.sort()
            seq.slot = self.free_slots.pop(0)
            seq.status = SequenceStatus.RUNNING
            prefills.append(seq)
            budget -= need
        self.running.extend(prefills)
        return decodes, prefills

    @staticmethod
    def _fits_merged(seq: Sequence, batch: list[Sequence]) -> bool:
        return all(other.adapter == seq.adapter for other in batch)

    def finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        if seq.slot >= 0:
            self.free_slots.append(seq.slot)
            seq.slot = -1
        if seq.lora_slot >= 0 and seq.adapter is not None:
            self.adapters.release(seq.adapter)
            seq.lora_slot = -1

    def abort(self, request_id: int) -> Sequence | None:
        for seq in list(self.waiting):
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                seq.status = SequenceStatus.FINISHED
                return seq
        for seq in self.running:
            if seq.request_id == request_id:
                self.finish(seq)
                return seq
        return None
