"""The scheduler without a model: fairness between adapters, no head-of-line blocking, and
every resource given back (``loraserve.testing.scheduling`` drives it step by step)."""

from __future__ import annotations

import pytest

from loraserve.engine.sequence import Sequence
from loraserve.testing.scheduling import Arrival, make_scheduler, run_step, simulate
from loraserve.wire.messages import FinishReason
from loraserve.wire.sampling import SamplingParams


def _add(scheduler, client, prompt=4, output=8):
    key = scheduler.adapters.hold(client) if client else None
    seq = Sequence([1] * prompt, SamplingParams(max_new_tokens=output), key)
    scheduler.add(seq)
    return seq


def _admitted(scheduler):
    """Run a step; the sequences it admitted (waiting before it)."""
    waiting = set(map(id, scheduler.waiting))
    return [seq for seq in run_step(scheduler) if id(seq) in waiting]


def _assert_released(scheduler):
    blocks = scheduler.blocks
    assert blocks.free_blocks == blocks.usable_blocks
    assert all(block.ref_count == 0 for block in blocks.blocks)
    assert not scheduler.running and not scheduler.queues
    assert not scheduler.adapters.refs and not scheduler.adapters.holds and not scheduler.adapters.stale


FLOOD = [Arrival(0, "a") for _ in range(40)] + [Arrival(5, "b") for _ in range(4)]


@pytest.mark.parametrize("fair", [True, False], ids=["vtc", "fcfs"])
def test_a_flooding_adapter_does_not_starve_a_light_one(fair):
    sim = simulate(make_scheduler(max_seqs=8, fair=fair), FLOOD)
    waits = sim.waits("b")
    if fair:  # admitted at the first KV slots that free (step 32: no preemption)
        assert waits == [27, 27, 27, 27]
    else:  # behind all 40 of the flood
        assert min(waits) >= 150


def test_backlogged_clients_share_service_evenly():
    arrivals = [Arrival(0, "a") for _ in range(40)] + [Arrival(0, "b") for _ in range(40)]
    sim = simulate(make_scheduler(max_seqs=8), arrivals)
    first = sum(step.get("a", 0) for step in sim.served[:200])
    second = sum(step.get("b", 0) for step in sim.served[:200])
    assert abs(first - second) <= 0.1 * (first + second)


def test_fcfs_within_one_client():
    sim = simulate(make_scheduler(max_seqs=2), [Arrival(0, "a", output=3) for _ in range(6)])
    admitted = [r.admitted for _, r in sorted(sim.records.items())]
    assert admitted == sorted(admitted)


def test_blocked_adapter_does_not_block_base_or_pinned_requests():
    scheduler = make_scheduler(max_seqs=8, lora_slots=2, adapters=("p", "a", "b"), pinned=("p",))
    running = _add(scheduler, "a")
    run_step(scheduler)  # "a" takes the only unpinned slot
    blocked = _add(scheduler, "b")
    behind = [_add(scheduler, None), _add(scheduler, "p"), _add(scheduler, "a")]
    assert _admitted(scheduler) == behind[:2]  # base and pinned go ahead of the blocked head
    assert blocked in scheduler.waiting and behind[2] in scheduler.waiting  # "a" waits for "b"
    scheduler.finish(running)
    assert _admitted(scheduler)[0] is blocked  # the freed slot goes to the request that waited for it
    for seq in [*scheduler.running, *scheduler.waiting]:
        scheduler.finish(seq)
    _assert_released(scheduler)


def test_unregister_while_queued_keeps_the_version_and_releases_everything():
    scheduler = make_scheduler(max_seqs=1)
    first = _add(scheduler, "a")
    queued = _add(scheduler, "a")
    run_step(scheduler)
    scheduler.adapters.unregister("a")
    assert queued.adapter in scheduler.adapters.stale
    assert scheduler.adapters.weights(queued.adapter) == "a"  # still readable
    scheduler.finish(first)
    assert _admitted(scheduler) == [queued]
    scheduler.finish(queued)
    _assert_released(scheduler)


def test_abort_anywhere_releases_everything():
    scheduler = make_scheduler(max_seqs=1)
    seqs = [_add(scheduler, "a"), _add(scheduler, "b"), _add(scheduler, None)]
    run_step(scheduler)
    for seq in seqs:
        assert scheduler.abort(seq.request_id) is seq and seq.finish_reason is FinishReason.ABORT
        scheduler.finish(seq)  # twice is harmless
    assert scheduler.abort(seqs[0].request_id) is None
    _assert_released(scheduler)
