"""The engine's lock is not held while the model runs: a request can be added, and one in the
running batch aborted, during a forward pass. An abort of a sequence in flight takes effect when
its step ends: its blocks and LoRA slot are given back then, never while the forward still
writes them."""

from __future__ import annotations

import threading

import pytest

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama
from loraserve.wire.messages import FinishReason

PARAMS = SamplingParams(max_new_tokens=8, ignore_eos=True)
HANG_S = 30  # only a hang detector: every wait below returns at once when the engine is right


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    base = make_tiny_llama(root / "base")
    engine = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64, max_lora_rank=8))
    engine.register_adapter("qv", make_peft_adapter(base, root / "qv", rank=4))
    return engine


class PausedForward:
    """Wraps the runner's forward so the test can act while a step is inside it."""

    def __init__(self, engine: LLMEngine, fail: bool = False) -> None:
        self.engine, self.original, self.fail = engine, engine.runner.forward, fail
        self.entered, self.release = threading.Event(), threading.Event()

    def __enter__(self) -> PausedForward:
        def forward(batch):
            self.entered.set()
            assert self.release.wait(HANG_S)
            if self.fail:
                raise RuntimeError("injected forward failure")
            return self.original(batch)

        self.engine.runner.forward = forward
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.engine.runner.forward = self.original


def _in_thread(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_a_request_is_added_and_stats_read_while_the_model_runs(engine):
    first = engine.add_request("the quick brown", None, PARAMS)
    with PausedForward(engine) as paused:
        stepping = _in_thread(engine.step)
        assert paused.entered.wait(HANG_S)
        added: list = []
        adder = _in_thread(lambda: added.append(engine.add_request("a lazy dog", "qv", PARAMS)))
        adder.join(HANG_S)
        assert not adder.is_alive() and added, "add_request waited for the forward pass"
        assert engine.stats()["waiting"] == 1
        paused.release.set()
        stepping.join(HANG_S)
    while engine.has_work():
        engine.step()
    assert first.finish_reason == added[0].finish_reason == "length"
    assert len(first.output_ids) == len(added[0].output_ids) == 8


def test_aborting_a_sequence_in_flight_releases_it_when_the_step_ends(engine):
    events: list = []
    victim = engine.add_request("hello there", "qv", PARAMS, on_event=events.append)
    other = engine.add_request("hello there", None, PARAMS)
    engine.step()  # both prefilled
    with PausedForward(engine) as paused:
        stepping = _in_thread(engine.step)
        assert paused.entered.wait(HANG_S)
        engine.abort(victim.request_id)
        stats = engine.stats()  # the forward may still write its blocks: nothing given back yet
        assert stats["lora_refs"] == 1 and stats["running"] == 2
        paused.release.set()
        stepping.join(HANG_S)
    assert victim.finish_reason is FinishReason.ABORT
    reasons = [e.finish_reason for e in events]
    assert reasons.count(FinishReason.ABORT) == 1 and reasons[-1] is FinishReason.ABORT
    assert len(victim.output_ids) == 1  # the in-flight step added no token after the abort
    while engine.has_work():
        engine.step()
    assert other.finish_reason == "length"
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == stats["lora_refs"] == stats["adapter_holds"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_a_forward_that_fails_after_an_abort_in_flight_still_gives_everything_back(engine):
    events: list = []
    victim = engine.add_request("hello there", "qv", PARAMS, on_event=events.append)
    other = engine.add_request("general kenobi", "qv", PARAMS)
    engine.step()
    with PausedForward(engine, fail=True) as paused:
        stepping = _in_thread(engine.step)
        assert paused.entered.wait(HANG_S)
        engine.abort(victim.request_id)
        paused.release.set()
        stepping.join(HANG_S)
    assert victim.finish_reason == other.finish_reason == "error"  # the step failed for both
    assert [e.finish_reason for e in events][-1] == "error"
    assert sum(e.finish_reason is not None for e in events) == 1  # one final event, not two
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == stats["lora_refs"] == stats["adapter_holds"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    assert engine.add_request("hello there", "qv", PARAMS) and engine.has_work()  # the engine goes on
    while engine.has_work():
        engine.step()
