"""Adapters updated or unregistered under load, pins, head-of-line blocking and an idle loop,
on the real engine with a tiny model. Queued requests hold the version they were added with."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from loraserve.engine import LLMEngine, SamplingParams
from loraserve.errors import AdapterNotFoundError, BadRequestError
from loraserve.testing.reference import engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama
from loraserve.wire.messages import FinishReason

GREEDY = SamplingParams(max_new_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    base = make_tiny_llama(root / "base")
    return (
        base,
        make_peft_adapter(base, root / "qv", rank=4),
        make_peft_adapter(base, root / "all", rank=8, target_modules="all-linear", seed=5),
    )


def _engine(base: Path, **kwargs) -> LLMEngine:
    return engine_with_adapters(base, {}, **({"max_model_len": 64, "max_lora_rank": 8} | kwargs))


def _run(engine: LLMEngine, seqs) -> None:
    while any(s.finish_reason is None for s in seqs):
        engine.step()


def _assert_nothing_leaked(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == stats["stale_adapters"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    assert stats["lora_refs"] == stats["adapter_holds"] == 0


@pytest.mark.parametrize("change", ["unregister", "update", "unregister_and_delete"])
def test_queued_requests_finish_on_the_version_they_were_added_with(tmp_path, files, change):
    base, qv, all8 = files
    engine = _engine(base, max_rolling_batch_size=1)  # one KV slot: the rest must queue
    source = Path(shutil.copytree(qv, tmp_path / "x"))
    engine.register_adapter("x", source, preload=False)
    expected = engine.generate(["hello"], ["x"], GREEDY)[0].token_ids
    seqs = [engine.add_request("dog", None, GREEDY)] + [
        engine.add_request("hello", "x", GREEDY) for _ in range(3)
    ]
    engine.step()  # the base request runs; the three on "x" wait in the queue
    if change == "update":
        engine.register_adapter("x", all8)
    else:
        engine.unregister_adapter("x")
        if change == "unregister_and_delete":
            shutil.rmtree(source)  # as archive clean-up on unregister would
    _run(engine, seqs)
    assert [s.finish_reason for s in seqs] == ["length"] * 4
    assert all(s.output_ids == expected for s in seqs[1:])
    if change == "update":
        assert engine.generate(["hello"], ["x"], GREEDY)[0].token_ids != expected
    else:
        with pytest.raises(AdapterNotFoundError):
            engine.add_request("hello", "x", GREEDY)
    _assert_nothing_leaked(engine)


def test_lifecycle_churn_under_the_background_loop(files):
    base, qv, all8 = files
    engine = _engine(base, max_rolling_batch_size=3, max_loras=2)
    engine.start()
    try:
        seqs = []
        for round_ in range(6):
            engine.register_adapter("x", qv if round_ % 2 else all8)
            seqs += [engine.add_request("hello", name, GREEDY) for name in ("x", None, "x")]
            engine.unregister_adapter("x")
        deadline = time.monotonic() + 60
        while any(s.finish_reason is None for s in seqs) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    assert [s.finish_reason for s in seqs] == ["length"] * len(seqs)
    _assert_nothing_leaked(engine)


def test_pins_are_bounded_so_other_adapters_still_run(files):
    base, qv, all8 = files
    engine = _engine(base, max_loras=2)
    engine.register_adapter("p1", qv, pin=True)
    with pytest.raises(BadRequestError, match="max_loras - 1"):
        engine.register_adapter("p2", all8, pin=True)
    engine.register_adapter("other", all8)
    results = engine.generate(["hello", "dog", "fox"], ["p1", "other", None], GREEDY)
    assert [r.finish_reason for r in results] == ["length"] * 3
    _assert_nothing_leaked(engine)


def test_request_waiting_for_a_lora_slot_does_not_block_the_queue(files):
    base, qv, all8 = files
    engine = _engine(base, max_loras=2)
    engine.register_adapter("p", qv, pin=True)
    engine.register_adapter("a", all8)
    engine.register_adapter("b", qv)
    running = engine.add_request("hello", "a", SamplingParams(max_new_tokens=10, ignore_eos=True))
    engine.step()  # "a" holds the only unpinned slot
    blocked = engine.add_request("hello", "b", GREEDY)
    base_req, pinned_req = engine.add_request("dog", None, GREEDY), engine.add_request("dog", "p", GREEDY)
    engine.step()
    assert blocked.status.value == "waiting"
    assert base_req.status.value == pinned_req.status.value == "running"
    _run(engine, [running, blocked, base_req, pinned_req])
    assert blocked.output_ids == engine.generate(["hello"], ["b"], GREEDY)[0].token_ids
    _assert_nothing_leaked(engine)


def test_loop_sleeps_when_nothing_can_run_and_wakes_on_a_change(files, monkeypatch):
    """A request that cannot be admitted (every LoRA slot refused here) must not make the
    loop spin: it waits on the condition until a request, abort or adapter change."""
    base, qv, _ = files
    engine = _engine(base)
    engine.register_adapter("x", qv)
    monkeypatch.setattr(engine.adapters, "acquire_key", lambda key: None)
    calls = []
    schedule = engine.scheduler.schedule
    monkeypatch.setattr(engine.scheduler, "schedule", lambda: calls.append(1) or schedule())
    engine.start()
    try:
        stuck = engine.add_request("hello", "x", GREEDY)
        deadline = time.monotonic() + 30
        while engine._idle_epoch != engine._epoch and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = len(calls)
        time.sleep(0.2)  # a spinning loop would schedule thousands of times meanwhile
        assert len(calls) == seen
        result = engine.generate(["dog"], None, GREEDY)[0]  # a new request wakes it
        assert result.finish_reason == "length"
        assert engine.abort(stuck.request_id) is stuck and stuck.finish_reason is FinishReason.ABORT
    finally:
        engine.stop()
    _assert_nothing_leaked(engine)


def test_flooding_adapter_does_not_delay_a_light_one_in_the_engine(files):
    """The real engine, steps counted: 12 requests on "a" fill the queue, then 2 on "b"."""
    base, qv, all8 = files
    engine = _engine(base, max_rolling_batch_size=2)
    engine.register_adapter("a", qv)
    engine.register_adapter("b", all8)
    started: dict[int, int] = {}

    def first_token(event):
        started.setdefault(event.request_id, engine.steps)

    flood = [engine.add_request("hello", "a", GREEDY, first_token) for _ in range(12)]
    light = [engine.add_request("dog", "b", GREEDY, first_token) for _ in range(2)]
    _run(engine, flood + light)
    assert all(s.finish_reason == "length" for s in flood + light)
    # b's requests start in the first two batches, a and b taking turns (measured: a starts
    # at steps 1, 7, 13, 13, ..., 37, 37); first come first served would start b at 37, 37
    assert [started[s.request_id] for s in light] == [1, 7]
    _assert_nothing_leaked(engine)
