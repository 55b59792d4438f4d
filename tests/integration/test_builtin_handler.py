"""The built-in handler in process on a tiny engine: the typed ``generate`` hook, the DJL
``handle`` path (workflows) through the same LMI spec, and aborts that release what the
sequences held."""

from __future__ import annotations

import asyncio
import json
import math
import time
from types import SimpleNamespace

import pytest

from loraserve.engine.sequence import TokenEvent
from loraserve.errors import BadRequestError
from loraserve.handlers import builtin_llm
from loraserve.handlers.generation import _TokenTexts, _Track
from loraserve.handlers.io import Input
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama
from loraserve.wire.messages import GenerateRequest, GenerateResult, SamplingSpec, TokenStream

LONG = SamplingSpec(max_new_tokens=2000, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("handler")
    base = make_tiny_llama(root / "base", max_positions=4096)
    qv = make_peft_adapter(base, root / "qv", rank=4)
    builtin_llm._initialise(
        {
            "model_id": str(base),
            "dtype": "fp32",
            "max_model_len": "4096",
            "max_lora_rank": "8",
            "max_prompt_chars": "100000",
        }
    )
    eng = builtin_llm.engine()
    eng.register_adapter("qv", qv)
    yield eng
    eng.stop()


def _released(engine) -> bool:
    stats = engine.stats()
    return (
        stats["running"] == stats["waiting"] == stats["lora_refs"] == 0
        and stats["kv_blocks_free"] == stats["kv_blocks_total"]
    )


def _wait_released(engine, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not _released(engine):
        assert time.monotonic() < deadline, "sequences still hold KV slots or adapter references"
        time.sleep(0.01)


def test_djl_handle_speaks_lmi_like_the_front(engine):
    body = {
        "inputs": ["the quick", "hello"],
        "adapters": ["", "qv"],
        "parameters": {"max_new_tokens": 5, "ignore_eos": True, "details": True},
    }
    item = Input()
    item.content.add("data", json.dumps(body).encode())
    output = asyncio.run(builtin_llm.handle(item))
    answers = json.loads(output.content.values[0])
    sampling = SamplingSpec(max_new_tokens=5, ignore_eos=True)
    typed = asyncio.run(
        builtin_llm.generate(GenerateRequest(sampling, prompts=("the quick", "hello"), adapters=(None, "qv")))
    )
    assert isinstance(typed, GenerateResult)
    assert [a["generated_text"] for a in answers] == [s.text for s in typed.sequences]
    assert [a["details"]["generated_tokens"] for a in answers] == [5, 5]
    assert output.properties["x-loraserve-generated-tokens"] == "10"
    bad = Input()
    bad.content.add("data", b'{"inputs": "x", "parameters": {"do_sample": "false"}}')
    refused = asyncio.run(builtin_llm.handle(bad))
    assert refused.code == 400 and b"parameters.do_sample" in refused.content.values[0]


def test_cancelling_a_call_aborts_its_sequences(engine):
    async def scenario() -> None:
        request = GenerateRequest(LONG, prompts=("the", "hello"), adapters=("qv", None))
        call = asyncio.ensure_future(builtin_llm.generate(request))
        while not engine.scheduler.running:
            await asyncio.sleep(0.005)
        steps = engine.steps
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.to_thread(_wait_released, engine)
        assert engine.steps - steps < LONG.max_new_tokens // 2

    asyncio.run(scenario())


def test_closing_a_stream_aborts_its_sequence(engine):
    async def scenario() -> None:
        stream = await builtin_llm.generate(
            GenerateRequest(LONG, prompts=("the",), adapters=("qv",), stream=True, logprobs=True)
        )
        assert isinstance(stream, TokenStream)
        first = await stream.events.__anext__()
        assert first.logprob is not None and first.logprob <= 0
        await stream.events.aclose()
        await asyncio.to_thread(_wait_released, engine)

    asyncio.run(scenario())


def test_a_refused_prompt_aborts_the_ones_submitted_before_it(engine):
    async def scenario() -> None:
        too_long = "the quick brown fox " * 2000  # under max_prompt_chars, over max_model_len tokens
        request = GenerateRequest(LONG, prompts=("the", too_long), adapters=("qv", None))
        with pytest.raises(BadRequestError, match="max_model_len"):
            await builtin_llm.generate(request)
        await asyncio.to_thread(_wait_released, engine)
        with pytest.raises(BadRequestError, match="max_prompt_chars"):
            await builtin_llm.generate(GenerateRequest(LONG, prompts=("x" * 100_001,)))

    asyncio.run(scenario())


@pytest.mark.parametrize("logprob", [math.nan, math.inf, -math.inf])
def test_non_finite_logprobs_become_none(logprob):
    seq = SimpleNamespace(text="a", prompt_ids=[1, 2], output_ids=[5], logprobs=[logprob])
    track = _Track(0, seq, score_only=False)  # type: ignore[arg-type]
    texts = _TokenTexts(SimpleNamespace(decode=lambda ids: "a"))
    token = track.token(TokenEvent(1, 5, "a", logprob, "length", ((5, logprob), (6, -1.0))), texts, keep=True)
    assert token.logprob is None and token.summary is not None
    assert token.summary.tokens[0].logprob is None
    assert token.logprobs is not None and token.logprobs.logprob is None
    assert token.logprobs.top == (("a", -1.0),)
    assert token.summary.cumulative_logprob is None


def test_every_sample_of_a_call_is_released_when_it_is_cancelled_or_its_stream_closed(engine):
    """n / best_of run several sequences per prompt: all of them give back their KV blocks and
    adapter references, on cancellation and when a stream is closed after its first token."""

    async def scenario() -> None:
        request = GenerateRequest(LONG, prompts=("the", "hello"), adapters=("qv", None), n=2, best_of=3)
        call = asyncio.ensure_future(builtin_llm.generate(request))
        while len(engine.scheduler.running) + len(engine.scheduler.waiting) < 6:
            await asyncio.sleep(0.005)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.to_thread(_wait_released, engine)
        stream = await builtin_llm.generate(
            GenerateRequest(LONG, prompts=("the",), adapters=("qv",), n=3, stream=True, top_logprobs=2)
        )
        assert isinstance(stream, TokenStream)
        first = await stream.events.__anext__()
        assert first.logprobs is not None and len(first.logprobs.top) == 2
        await stream.events.aclose()
        await asyncio.to_thread(_wait_released, engine)

    asyncio.run(scenario())
