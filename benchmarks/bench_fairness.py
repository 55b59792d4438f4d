"""Fairness between adapters under contention: the engine's scheduler (VTC) against the same
scheduler serving clients first come first served. No model: each scheduled sequence makes one
token per step, so the figures are in steps and tokens (exact, machine-independent).

Scenarios: (1) adapter "a" floods 40 requests at step 0, adapter "b" sends 4 at step 5;
(2) both flood 40 at step 0; (3) "a" floods, "b" trickles one request every 8 steps.

    python benchmarks/bench_fairness.py [--kv-slots 8] [--prompt 16] [--output 32]
"""

from __future__ import annotations

import argparse
import statistics

from loraserve.testing.scheduling import Arrival, Simulation, make_scheduler, simulate


def _share(sim: Simulation, client: str, steps: int) -> float:
    window = sim.served[:steps]
    total = sum(sum(step.values()) for step in window)
    return sum(step.get(client, 0) for step in window) / max(total, 1)


def _report(name: str, arrivals: list[Arrival], kv_slots: int) -> None:
    print(f"\n{name}")
    for label, fair in (("VTC ", True), ("FCFS", False)):
        sim = simulate(make_scheduler(max_seqs=kv_slots, fair=fair), arrivals)
        waits = sim.waits("b")
        last_b = max(r.finished for r in sim.records.values() if r.client == "b")
        print(
            f"  {label}: b waits (steps) mean {statistics.mean(waits):6.1f} max {max(waits):4d}; "
            f"b's last request done at step {last_b:4d}; "
            f"b's share of tokens over the first 128 steps {_share(sim, 'b', 128):.2f}; "
            f"all done at step {len(sim.served)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kv-slots", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--output", type=int, default=32)
    args = parser.parse_args()
    p, o = args.prompt, args.output
    flood = [Arrival(0, "a", p, o) for _ in range(40)]
    _report(
        "1. a floods 40 at step 0, b sends 4 at step 5", flood + [Arrival(5, "b", p, o)] * 4, args.kv_slots
    )
    _report(
        "2. a and b both flood 40 at step 0",
        flood + [Arrival(0, "b", p, o) for _ in range(40)],
        args.kv_slots,
    )
    _report(
        "3. a floods 40, b sends one every 8 steps (20 in all)",
        flood + [Arrival(8 * i, "b", p, o) for i in range(20)],
        args.kv_slots,
    )


if __name__ == "__main__":
    main()
