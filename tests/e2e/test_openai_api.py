"""The OpenAI-compatible API, driven by the official ``openai`` client."""

from __future__ import annotations

import pytest

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

openai = pytest.importorskip("openai")


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
    stream = client.chat.completions.create(
        model="qv", messages=messages, max_tokens=6, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == answer.choices[0].message.content


def test_unknown_model_is_a_404(env):
    client, _ = env
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, suffix="end")
    with pytest.raises(openai.BadRequestError, match="frobnicate"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"frobnicate": 1})
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )


def sampled(client, **kwargs):
    """Five sampled tokens from adapter qv on "hello", EOS ignored."""
    return client.completions.create(
        model="qv", prompt="hello", max_tokens=5, temperature=1.0, extra_body={"ignore_eos": True}, **kwargs
    )


def test_n_samples_with_seeds_and_usage(env):
    client, reference = env
    answer = sampled(client, n=3, seed=11)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    again = sampled(client, n=3, seed=11)
    assert [c.text for c in answer.choices] == [c.text for c in again.choices]
    params = SamplingParams(max_new_tokens=5, do_sample=True, seed=12, ignore_eos=True)
    assert (
        answer.choices[1].text == reference.generate(["hello"], ["qv"], params)[0].text
    )  # sample 1: seed + 1
    prompt_tokens = len(reference.tokenizer.encode("hello"))
    assert answer.usage.prompt_tokens == prompt_tokens and answer.usage.completion_tokens == 15


def test_token_id_prompts_and_prompt_lists_get_one_choice_each(env):
    client, reference = env
    expected = [greedy(reference, "the quick", None, 4)] * 2 + [greedy(reference, "hello", None, 4)] * 2
    ids = [reference.tokenizer.encode(p) for p in ("the quick", "hello")]
    for prompt in (ids, ["the quick", "hello"]):
        answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0, n=2)
        assert [c.text for c in sorted(answer.choices, key=lambda c: c.index)] == expected
    single = client.completions.create(model="tiny", prompt=ids[0], max_tokens=4, temperature=0)
    assert single.choices[0].text == expected[0]


def test_logprobs_and_top_logprobs_equal_the_engine(env):
    client, reference = env
    params = SamplingParams(max_new_tokens=4, logprobs=True, top_logprobs=3, ignore_eos=True)
    seq = reference.add_request("the quick", "qv", params)
    while reference.has_work():
        reference.step()
    answer = client.completions.create(
        model="qv",
        prompt="the quick",
        max_tokens=4,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs.token_logprobs == pytest.approx(seq.logprobs, abs=1e-5)
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert all(
        len(top) <= 3 and max(top.values()) >= lp - 1e-6
        for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs)
    )
    chat = client.chat.completions.create(
        model="qv",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(c.top_logprobs) == 2 for c in content)
    assert all(c.logprob <= 0 and c.bytes == list(c.token.encode()) for c in content)
    stream = client.chat.completions.create(
        model="qv",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = [
        c.choices[0].logprobs.content[0] for c in chunks if c.choices and c.choices[0].logprobs.content
    ]
    assert [c.token for c in streamed] == [c.token for c in content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content], abs=1e-6)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_echo_scores_the_prompt_as_transformers_does(env):
    """lm-evaluation-harness's loglikelihood request: echo, logprobs=1, max_tokens=0."""
    import torch
    from transformers import AutoModelForCausalLM

    client, reference = env
    text = "the quick brown fox"
    ids = reference.tokenizer.encode(text)
    answer = client.completions.create(
        model="tiny", prompt=text, echo=True, logprobs=1, max_tokens=0, temperature=0
    )
    choice = answer.choices[0]
    assert choice.text == text and answer.usage.completion_tokens == 0
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    model = AutoModelForCausalLM.from_pretrained(reference.model_path, dtype=torch.float32)
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    wanted = [float(expected[p, ids[p + 1]]) for p in range(len(ids) - 1)]
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(wanted, abs=1e-3)
    for p, top in enumerate(choice.logprobs.top_logprobs[1:]):
        assert list(top.values()) == pytest.approx([float(expected[p].max())], abs=1e-3)


def test_chat_max_tokens_defaults_to_the_context_left_and_stops_cut(env):
    client, reference = env
    answer = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert answer.usage.completion_tokens > 16 and answer.choices[0].finish_reason == "length"
    assert answer.usage.total_tokens == 128  # the store's option.max_model_len
    biased = client.completions.create(
        model="tiny",
        prompt="hello",
        max_tokens=4,
        temperature=0,
        logit_bias={"7": 100},
        extra_body={"ignore_eos": True},
    )
    assert biased.choices[0].text == reference.tokenizer.decode([7] * 4)


def test_best_of_answers_the_most_likely_sample_and_n_streams_by_index(env):
    client, reference = env
    answer = sampled(client, best_of=3, seed=21)
    samples = [
        reference.generate(
            ["hello"],
            ["qv"],
            SamplingParams(max_new_tokens=5, do_sample=True, seed=21 + i, ignore_eos=True, logprobs=True),
        )[0]
        for i in range(3)
    ]
    best = max(samples, key=lambda r: sum(r.logprobs))
    assert [c.text for c in answer.choices] == [best.text]
    stream = sampled(client, n=2, seed=21, stream=True)
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == [samples[0].text, samples[1].text]
