"""The OpenAI-compatible API, driven by the official ``openai`` client."""

from __future__ import annotations

import pytest

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store, base = make_engine_store(tmp_path_factory.mktemp("openai"))
    reference = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_lora_rank=8))
    reference.register_adapter("qv", store / "tiny" / "adapters" / "qv")
    with ServerProcess(["--model-store", str(store)]) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
        yield client, reference


def greedy(reference, prompt, adapter, tokens=6):
    return reference.generate([prompt], [adapter], SamplingParams(max_new_tokens=tokens))[0].text


def test_models_lists_base_and_adapters(env):
    client, _ = env
    assert {m.id for m in client.models.list().data} == {"tiny", "qv"}


@pytest.mark.parametrize("model,adapter", [("tiny", None), ("qv", "qv")])
def test_completions(env, model, adapter):
    client, reference = env
    answer = client.completions.create(model=model, prompt="the quick", max_tokens=6, temperature=0)
    assert answer.choices[0].text == greedy(reference, "the quick", adapter)
    assert 0 < answer.usage.completion_tokens <= 6
    assert answer.usage.prompt_tokens == len(reference.tokenizer.encode("the quick"))


def test_streaming_completion(env):
    client, reference = env
    stream = client.completions.create(model="qv", prompt="hello", max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == greedy(reference, "hello", "qv")
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_chat_completion_and_stream(env):
    client, reference = env
    messages = [{"role": "user", "content": "hello"}]
    answer = client.chat.completions.create(model="qv", messages=messages, max_tokens=6, temperature=0)
    prompt = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert answer.choices[0].message.content == greedy(reference, prompt, "qv")
    stream = client.chat.completions.create(model="qv", messages=messages, max_tokens=6, temperature=0,
                                            stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == answer.choices[0].message.content


def test_unknown_model_is_a_404(env):
    client, _ = env
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, n=2)
