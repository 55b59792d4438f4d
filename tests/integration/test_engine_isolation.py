"""One bad request, adapter or step fails at most its own sequences, never the batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loraserve.engine import LLMEngine, SamplingParams
from loraserve.model.peft_adapter import load_peft_adapter
from loraserve.testing.reference import engine_with_adapters
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

GREEDY = SamplingParams(max_new_tokens=8, ignore_eos=True)
SAMPLED = SamplingParams(max_new_tokens=8, ignore_eos=True, do_sample=True, temperature=0.9, seed=7)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    base = make_tiny_llama(root / "base")
    return root, base, make_peft_adapter(base, root / "qv", rank=4)


def _engine(base: Path, **kwargs) -> LLMEngine:
    return engine_with_adapters(base, {}, **({"max_model_len": 64, "max_lora_rank": 8} | kwargs))


def _register_nan_adapter(engine: LLMEngine, path: Path, name: str = "nan") -> None:
    """Registration refuses NaN weights, so put them in behind its back (an overflow at run
    time looks the same to the sampler)."""
    weights = load_peft_adapter(path, engine.runner.args, 8, engine.dtype)
    a, _ = next(iter(weights.weights.values()))
    a[0, 0] = float("nan")
    engine.adapters.register(name, str(path), weights, pinned=False, preload=True)


def _run(engine: LLMEngine, seqs) -> None:
    while any(s.finish_reason is None for s in seqs):
        engine.step()


def _assert_nothing_leaked(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    assert stats["lora_refs"] == stats["adapter_holds"] == 0


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_nan_adapter_fails_only_its_request(files, params):
    _, base, qv = files
    engine = _engine(base)
    engine.register_adapter("qv", qv)
    _register_nan_adapter(engine, qv)
    alone = [engine.generate([p], [a], SAMPLED)[0].token_ids for p, a in (("hello", None), ("dog", "qv"))]
    seqs = [
        engine.add_request("hello", None, SAMPLED),
        engine.add_request("fox", "nan", params),
        engine.add_request("dog", "qv", SAMPLED),
    ]
    _run(engine, seqs)
    assert [s.finish_reason for s in seqs] == ["length", "error", "length"]
    assert "non-finite" in (seqs[1].error or "")
    assert [seqs[0].output_ids, seqs[2].output_ids] == alone
    _assert_nothing_leaked(engine)


def test_penalty_that_overflows_fails_only_its_request(files):
    """1e-40 is refused by SamplingParams; past that check the sampler still guards its row."""
    _, base, _ = files
    engine = _engine(base)
    bad = SamplingParams(max_new_tokens=8, ignore_eos=True, do_sample=True, seed=1)
    bad.repetition_penalty = 1e-40  # as if a caller skipped validation
    good = engine.add_request("the quick", None, SAMPLED)
    broken = engine.add_request("the quick", None, bad)
    _run(engine, [good, broken])
    assert (good.finish_reason, broken.finish_reason) == ("length", "error")
    assert good.output_ids == engine.generate(["the quick"], None, SAMPLED)[0].token_ids
    _assert_nothing_leaked(engine)


def test_failed_sequence_leaves_no_poison_in_its_kv_slot(files):
    """A NaN sequence writes NaN keys/values into its KV slot; the next request in that slot,
    decoding beside a longer one, must not read them through masked positions."""
    _, base, qv = files
    engine = _engine(base, max_rolling_batch_size=2)
    _register_nan_adapter(engine, qv)
    long_prompt = "the quick brown fox jumps over the lazy dog " * 2
    poisoned = engine.add_request(long_prompt, "nan", GREEDY)
    other = engine.add_request(long_prompt, None, SamplingParams(max_new_tokens=20, ignore_eos=True))
    engine.step()
    assert poisoned.finish_reason == "error"
    later = engine.add_request("hello", None, GREEDY)  # takes the poisoned slot
    _run(engine, [other, later])
    assert later.finish_reason == "length"
    assert later.output_ids == engine.generate(["hello"], None, GREEDY)[0].token_ids
    _assert_nothing_leaked(engine)


def test_adapter_that_cannot_be_read_fails_only_its_request(tmp_path, files):
    _, base, qv = files
    engine = _engine(base)
    gone = Path(shutil.copytree(qv, tmp_path / "gone"))
    engine.register_adapter("gone", gone, preload=False)  # read again from disk when first used
    shutil.rmtree(gone)
    seqs = [engine.add_request("hello", None, GREEDY), engine.add_request("hello", "gone", GREEDY)]
    _run(engine, seqs)
    assert [s.finish_reason for s in seqs] == ["length", "error"]
    assert "gone" in (seqs[1].error or "")
    _assert_nothing_leaked(engine)


def test_a_failing_step_fails_its_batch_and_the_loop_goes_on(files, monkeypatch):
    _, base, _ = files
    engine = _engine(base)
    real_forward = engine.runner.forward
    calls = iter([RuntimeError("device lost")])

    def flaky(batch):
        error = next(calls, None)
        if error is not None:
            raise error
        return real_forward(batch)

    monkeypatch.setattr(engine.runner, "forward", flaky)
    first = engine.add_request("hello", None, GREEDY)
    assert engine.step() == [first]
    engine.start()
    try:
        result = engine.generate(["dog"], None, GREEDY)[0]
    finally:
        engine.stop()
    assert first.finish_reason == "error" and "device lost" in (first.error or "")
    assert result.finish_reason == "length"
    _assert_nothing_leaked(engine)


def test_a_raising_event_callback_fails_only_its_request(files):
    _, base, _ = files
    engine = _engine(base)

    def broken(_event):
        raise RuntimeError("client went away")

    bad = engine.add_request("hello", None, GREEDY, on_event=broken)
    good = engine.add_request("hello", None, GREEDY, on_event=lambda _e: None)
    _run(engine, [bad, good])
    assert (bad.finish_reason, good.finish_reason) == ("error", "length")
    _assert_nothing_leaked(engine)
