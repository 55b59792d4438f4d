"""Drive the engine's ``Scheduler`` without a model: requests of given prompt and output
lengths arrive at given steps, each scheduled sequence "generates" one token per step. Tests
and ``benchmarks/bench_fairness.py`` use it to count, in steps and tokens, who is served when."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from loraserve.engine.adapter_cache import AdapterCache
from loraserve.engine.fairness import VirtualTokenCounter
from loraserve.engine.sampling import SamplingParams
from loraserve.engine.scheduler import Scheduler
from loraserve.engine.sequence import Sequence


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


def make_scheduler(kv_slots: int = 8, lora_slots: int = 4, adapters: tuple[str, ...] = ("a", "b"),
                   pinned: tuple[str, ...] = (), budget: int = 4096, fair: bool = True) -> Scheduler:
    cache = AdapterCache(lora_slots, 64, lambda entry: entry.name, lambda slot, w: None, lambda slot: None)
    for name in adapters:
        cache.register(name, f"/{name}", name, pinned=name in pinned, preload=True)
    scheduler = Scheduler(kv_slots, budget, cache, merged=False)
    if not fair:
        scheduler.fairness = FirstComeFirstServed()
    return scheduler


def simulate(scheduler: Scheduler, arrivals: list[Arrival], max_steps: int = 10_000) -> Simulation:
    sim, pending, live = Simulation(), sorted(arrivals, key=lambda a: a.step), []
    for step in range(max_steps):
        while pending and pending[0].step <= step:
            arrival = pending.pop(0)
            key = scheduler.adapters.hold(arrival.client) if arrival.client else None
            seq = Sequence([1] * arrival.prompt, SamplingParams(max_new_tokens=arrival.output), key)
            scheduler.add(seq)
            sim.records[seq.request_id] = Record(arrival.client, step)
            live.append(seq)
        decodes, prefills = scheduler.schedule()
        for seq in prefills:
            sim.records[seq.request_id].admitted = step
        served: dict[Hashable, int] = {}
        for seq in [*decodes, *prefills]:
            seq.cached = seq.total_len
            seq.output_ids.append(0)
            served[seq.client] = served.get(seq.client, 0) + 1
            if len(seq.output_ids) >= seq.params.max_new_tokens:
                scheduler.finish(seq)
                sim.records[seq.request_id].finished = step
        scheduler.account([*decodes, *prefills])
        sim.served.append(served)
        if not pending and not scheduler.has_work():
            break
    return sim
