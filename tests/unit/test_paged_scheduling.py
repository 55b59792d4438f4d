"""Scheduling over the paged KV cache, without a model: chunked prefill keeps decodes going,
preemption when blocks run out completes every request, prefixes are computed once."""

from __future__ import annotations

from loraserve.engine.sequence import Sequence, SequenceStatus
from loraserve.testing.scheduling import make_scheduler, run_step
from loraserve.wire.sampling import SamplingParams


def _add(scheduler, prompt, output=8, client=None):
    key = scheduler.adapters.hold(client) if client else None
    seq = Sequence(list(prompt), SamplingParams(max_new_tokens=output, ignore_eos=True), key)
    scheduler.add(seq)
    return seq


def _distinct(seed, length):
    return [seed * 100_000 + i for i in range(length)]


def _assert_released(scheduler):
    assert scheduler.blocks.free_blocks == scheduler.blocks.usable_blocks
    assert not scheduler.running and not scheduler.queues and not scheduler.adapters.refs


def test_a_long_prompt_is_chunked_while_every_decode_keeps_its_token_per_step():
    scheduler = make_scheduler(max_seqs=32, budget=256)
    decoders = [_add(scheduler, _distinct(i, 20), output=200) for i in range(16)]
    while not all(seq.output_ids for seq in decoders):  # 320 prompt tokens > 256: two steps
        run_step(scheduler)
    before = [len(seq.output_ids) for seq in decoders]
    long = _add(scheduler, _distinct(99, 4000), output=4)
    chunks = []
    while not long.output_ids:
        seqs = run_step(scheduler)
        assert sum(seq.new_tokens for seq in seqs) == 0  # postprocess consumed them
        assert all(d in seqs for d in decoders)  # every decode ran this step
        chunks.append(long.cached)
    steps = len(chunks)
    assert steps == -(-4000 // (256 - 16))  # the prompt got exactly what the decodes left
    assert [len(d.output_ids) for d in decoders] == [count + steps for count in before]


def test_step_tokens_never_exceed_the_budget():
    scheduler = make_scheduler(max_seqs=8, budget=64)
    for i in range(8):
        _add(scheduler, _distinct(i, 100 + 7 * i), output=5)
    while scheduler.has_work():
        seqs = scheduler.schedule()
        assert 0 < sum(seq.new_tokens for seq in seqs) <= 64
        for seq in scheduler.postprocess(seqs):
            seq.output_ids.append(0)
            if len(seq.output_ids) >= seq.params.max_new_tokens:
                scheduler.finish(seq)
    _assert_released(scheduler)


def test_preemption_under_a_tiny_pool_completes_everything_and_releases_all():
    # 12 usable blocks of 4 tokens; 6 requests of 10 + 14 tokens need 6 blocks each at the end
    scheduler = make_scheduler(max_seqs=6, num_blocks=13, block_size=4, adapters=("a",))
    seqs = [_add(scheduler, _distinct(i, 10), output=14, client="a" if i % 2 else None) for i in range(6)]
    for _ in range(1000):
        if not scheduler.has_work():
            break
        run_step(scheduler)
    assert all(len(seq.output_ids) == 14 and seq.status == SequenceStatus.FINISHED for seq in seqs)
    assert scheduler.preemptions > 0
    assert any(seq.preemptions for seq in seqs)
    _assert_released(scheduler)
    assert not any(scheduler.adapters.holds.values())


def test_a_preempted_request_resumes_from_its_cached_prefix():
    scheduler = make_scheduler(max_seqs=2, num_blocks=9, block_size=4)  # 8 usable blocks
    first = _add(scheduler, _distinct(1, 12), output=10)
    second = _add(scheduler, _distinct(2, 12), output=10)
    preempted_at = None
    for _ in range(100):
        if not scheduler.has_work():
            break
        run_step(scheduler)
        if second.preemptions and preempted_at is None:
            preempted_at = len(second.output_ids)
    assert preempted_at is not None  # the later request stepped back for the earlier one
    assert len(first.output_ids) == 10 and len(second.output_ids) == 10
    assert scheduler.blocks.stats.hit_tokens > 0  # its blocks were still cached when it resumed


def test_32_requests_with_a_shared_prompt_compute_it_once():
    scheduler = make_scheduler(max_seqs=32, budget=2048)
    system = _distinct(7, 512)
    seqs = [
        _add(scheduler, system + _distinct(100 + i, 16), output=2, client=("a", "b")[i % 2])
        for i in range(32)
    ]
    computed = 0
    while scheduler.has_work():
        batch = scheduler.schedule()
        computed += sum(seq.new_tokens for seq in batch)
        for seq in scheduler.postprocess(batch):
            seq.output_ids.append(0)
            if len(seq.output_ids) >= 2:
                scheduler.finish(seq)
    # the system prompt once per adapter, each suffix once, one decode step per request
    assert computed == 2 * 512 + 32 * 16 + 32
    assert all(len(seq.output_ids) == 2 for seq in seqs)
