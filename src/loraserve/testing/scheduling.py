"""Drive the engine's ``Scheduler`` without a model: requests of given prompt and output
lengths arrive at given steps, each scheduled sequence "generates" one token per step. Tests
and ``benchmarks/bench_fairness.py`` use it to count, in steps and tokens, who is served when."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from loraserve.engine.adapter_cache import AdapterCache
from loraserve.engine.block_manager import BlockManager
from loraserve.engine.fairness import VirtualTokenCounter
from loraserve.engine.scheduler import Scheduler
from loraserve.engine.sequence import Sequence, SequenceStatus
from loraserve.wire.sampling import SamplingParams


class FirstComeFirstServed(VirtualTokenCounter):
    """The same scheduler without fairness: clients in the order of their oldest request."""

    def order(self, clients):  # type: ignore[no-untyped-def]
        return list(clients)


@dataclass(slots=True)
class Arrival:
    step: int
    client: str | None  # adapter name; None: the base model
    prompt: int = 16
    output: int = 32


@dataclass(slots=True)
class Record:
    client: str | None
    arrived: int
    admitted: int = -1
    finished: int = -1


@dataclass
class Simulation:
    records: dict[int, Record] = field(default_factory=dict)
    served: list[dict[Hashable, int]] = field(default_factory=list)  # per step: tokens per client

    def waits(self, client: str | None) -> list[int]:
        """Steps each of ``client``'s requests waited between arrival and admission."""
        return [r.admitted - r.arrived for r in self.records.values() if r.client == client]


def make_scheduler(
    max_seqs: int = 8,
    lora_slots: int = 4,
    adapters: tuple[str, ...] = ("a", "b"),
    pinned: tuple[str, ...] = (),
    budget: int = 4096,
    fair: bool = True,
    num_blocks: int = 4096,
    block_size: int = 16,
    prefix_caching: bool = True,
) -> Scheduler:
    cache = AdapterCache(lora_slots, 64, lambda entry: entry.name, lambda slot, w: None, lambda slot: None)
    for name in adapters:
        cache.register(name, f"/{name}", name, pinned=name in pinned, preload=True)
    blocks = BlockManager(num_blocks, block_size, prefix_caching)
    scheduler = Scheduler(max_seqs, budget, cache, merged=False, blocks=blocks)
    if not fair:
        scheduler.fairness = FirstComeFirstServed()
    return scheduler


def run_step(scheduler: Scheduler) -> list[Sequence]:
    """Schedule one step and "run" it: every sequence whose input is then cached generates token
    0; those that reach ``max_new_tokens`` finish. Returns the step's sequences."""
    seqs = scheduler.schedule()
    for seq in scheduler.postprocess(seqs):
        seq.output_ids.append(0)
        if len(seq.output_ids) >= seq.params.max_new_tokens:
            scheduler.finish(seq)
    return seqs


def simulate(scheduler: Scheduler, arrivals: list[Arrival], max_steps: int = 10_000) -> Simulation:
    """Prompts hold distinct token ids (no prefix-cache hits between requests)."""
    sim, pending = Simulation(), sorted(arrivals, key=lambda a: a.step)
    for step in range(max_steps):
        while pending and pending[0].step <= step:
            arrival = pending.pop(0)
            key = scheduler.adapters.hold(arrival.client) if arrival.client else None
            seq = Sequence([], SamplingParams(max_new_tokens=arrival.output), key)
            seq.prompt_ids = [seq.request_id * 100_000 + i for i in range(arrival.prompt)]
            scheduler.add(seq)
            sim.records[seq.request_id] = Record(arrival.client, step)
        served: dict[Hashable, int] = {}
        before = {s.request_id: len(s.output_ids) for s in [*scheduler.running, *scheduler.waiting]}
        for seq in run_step(scheduler):
            record = sim.records[seq.request_id]
            record.admitted = step if record.admitted < 0 else record.admitted
            if len(seq.output_ids) > before[seq.request_id]:
                served[seq.client] = served.get(seq.client, 0) + 1
            if seq.status == SequenceStatus.FINISHED:
                record.finished = step
        sim.served.append(served)
        if not pending and not scheduler.has_work():
            break
    return sim
