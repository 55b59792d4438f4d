"""Adapter weights are read off the engine thread: while a request's adapter is read from disk,
the running batch keeps stepping (counted steps, the read held open by the test), the request
runs once its weights are in memory, and a failed read fails that request alone, with the
reason. Every hold and slot reference is given back afterwards."""

from __future__ import annotations

import threading

import pytest

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.engine.sequence import SequenceStatus
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama
from loraserve.wire.messages import FinishReason

LONG = SamplingParams(max_new_tokens=24, ignore_eos=True)
SHORT = SamplingParams(max_new_tokens=6, ignore_eos=True)
HANG_S = 30  # a hang detector only


@pytest.fixture
def engine(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    config = EngineConfig(model_id=str(base), dtype="fp32", max_model_len=64, max_lora_rank=8, max_loras=2)
    engine = LLMEngine(config)
    engine.register_adapter("warm", make_peft_adapter(base, tmp_path / "warm", rank=4))
    make_peft_adapter(base, tmp_path / "cold", rank=4, seed=3)
    engine.register_adapter("cold", tmp_path / "cold", preload=False)  # on disk only
    yield engine
    engine.prefetch.shutdown()


def _gate_reads(engine: LLMEngine, name: str, fail: bool = False) -> threading.Event:
    """Hold every read of ``name``'s weights until the returned event is set."""
    gate, original = threading.Event(), engine.adapters._load

    def load(entry):
        if entry.name == name:
            assert gate.wait(HANG_S)
            if fail:
                raise OSError("adapter_model.safetensors: Input/output error")
        return original(entry)

    engine.adapters._load = load
    return gate


def _run_until_done(engine: LLMEngine, seqs: list) -> None:
    while any(s.finish_reason is None for s in seqs):
        before = engine.steps
        engine.step()
        if engine.steps == before:  # waiting on a read: let the loader thread finish it
            with engine.lock:
                engine.lock.wait(0.01)


def _settled(engine: LLMEngine) -> None:
    stats = engine.adapters.stats()
    assert stats["holds"] == 0 and stats["slot_refs"] == 0
    assert engine.blocks.free_blocks == engine.blocks.usable_blocks


def test_the_batch_keeps_stepping_while_an_adapter_is_read(engine):
    reference = engine.generate(["hello there"], ["cold"], SHORT)[0].token_ids  # read in the step
    engine.register_adapter("cold", engine.adapters.entry("cold").path, preload=False)  # on disk again
    gate, reads = _gate_reads(engine, "cold"), engine.prefetch.reads
    running = engine.add_request("one two three", "warm", LONG)
    engine.step()
    waiting = engine.add_request("hello there", "cold", SHORT)  # its read starts now
    for _ in range(8):  # the read is held open: every step still runs the warm request
        before = engine.steps
        engine.step()
        assert engine.steps == before + 1, "a step stalled or found nothing to run"
    assert len(running.output_ids) >= 7 and waiting.status is SequenceStatus.WAITING
    assert "cold" not in {s.adapter[0] for s in engine.scheduler.running if s.adapter}
    gate.set()
    _run_until_done(engine, [running, waiting])
    assert waiting.output_ids == reference  # the same tokens as when it was read in the step
    assert engine.prefetch.reads == reads + 1  # read once, off the engine thread
    _settled(engine)


def test_a_failed_read_fails_its_requests_alone_and_a_later_one_reads_again(engine):
    _gate_reads(engine, "cold", fail=True).set()
    seqs = [engine.add_request(p, a, SHORT) for p, a in (("a b", "warm"), ("c d", "cold"), ("e f", None))]
    _run_until_done(engine, seqs)
    assert [s.finish_reason for s in seqs] == [FinishReason.LENGTH, FinishReason.ERROR, FinishReason.LENGTH]
    assert "adapter cold cannot be loaded" in seqs[1].error and "Input/output error" in seqs[1].error
    engine.adapters._load = engine._load_adapter  # the file reads again
    again = engine.generate(["c d"], ["cold"], SHORT)[0]
    assert again.finish_reason is FinishReason.LENGTH  # the failure was not remembered for good
    _settled(engine)
