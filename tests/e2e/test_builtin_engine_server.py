"""The built-in engine behind the server: LMI schema, adapters API into the engine, errors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.testing.server import ServerProcess
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama

PARAMS = {"max_new_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    base = make_tiny_llama(root / "weights", max_positions=4096)
    model = root / "store" / "tiny"
    (model / "adapters").mkdir(parents=True)
    make_peft_adapter(base, model / "adapters" / "qv", rank=4)
    make_peft_adapter(base, root / "store" / "extra" / "all8", rank=8, target_modules="all-linear", seed=7)
    dora = make_peft_adapter(base, root / "store" / "extra" / "dora", rank=4, seed=3)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    big = make_peft_adapter(base, root / "store" / "extra" / "big", rank=32, seed=4)
    (model / "serving.properties").write_text(
        f"engine=Python\noption.model_id={base}\noption.dtype=fp32\noption.max_lora_rank=16\n"
        "option.max_loras=2\noption.max_model_len=2048\n"
    )
    reference = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_lora_rank=16))
    reference.register_adapter("qv", model / "adapters" / "qv")
    reference.register_adapter("all8", root / "store" / "extra" / "all8")
    with ServerProcess(["--model-store", str(root / "store")], log_path=root / "server.log") as server:
        yield server, root / "store", reference, {"dora": dora, "big": big}


def _expected(reference, prompt, adapter):
    return reference.generate([prompt], [adapter], SamplingParams(**PARAMS))[0].text


def test_lmi_schema_with_each_calling_technique(env):
    server, _, reference, _ = env
    client = server.client
    body = {"inputs": "the quick brown", "parameters": PARAMS}
    base = client.post("/invocations", json=body).json()["generated_text"]
    assert base == _expected(reference, "the quick brown", None)
    with_body = client.post("/invocations", json={**body, "adapters": "qv"}).json()["generated_text"]
    assert with_body == _expected(reference, "the quick brown", "qv") != base
    assert client.post("/invocations?adapter=qv", json=body).json()["generated_text"] == with_body
    header = {"X-Amzn-SageMaker-Custom-Attributes": "adapter=qv"}
    assert client.post("/invocations", json=body, headers=header).json()["generated_text"] == with_body


def test_list_inputs_mixed_adapters_and_details(env):
    server, store, reference, _ = env
    src = store / "extra" / "all8"
    assert server.client.post(f"/models/tiny/adapters?name=all8&src={src}").status_code == 200
    prompts = ["hello world", "hello world", "hello world"]
    body = {"inputs": prompts, "adapters": ["", "qv", "all8"], "parameters": {**PARAMS, "details": True}}
    results = server.client.post("/predictions/tiny", json=body).json()
    assert [r["generated_text"] for r in results] == [
        _expected(reference, "hello world", a) for a in (None, "qv", "all8")
    ]
    details = results[2]["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 8
    assert len(details["tokens"]) == 8 and all(t["log_prob"] <= 0 for t in details["tokens"])
    described = server.client.get("/models/tiny/adapters/all8").json()  # its tier and its weights' size
    assert described["tier"] in ("resident", "in_memory")
    assert described["memory_bytes"] == reference.adapters.sizes()["all8"] > reference.adapters.sizes()["qv"]
    assert server.client.delete("/models/tiny/adapters/all8").status_code == 200
    gone = server.client.post("/predictions/tiny", json={**body, "adapters": ["", "qv", "all8"]})
    assert gone.status_code == 424 and "all8" in gone.json()["message"]  # DJL: 424, not registered


def test_streaming_jsonlines(env):
    server, _, reference, _ = env
    body = {"inputs": "lora adapters", "adapters": "qv", "parameters": PARAMS, "stream": True}
    with server.client.stream("POST", "/invocations", json=body) as reply:
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert reply.status_code == 200 and len(lines) == 8
    assert all(line["generated_text"] is None for line in lines[:-1])
    assert lines[-1]["generated_text"] == "".join(line["token"]["text"] for line in lines)
    assert lines[-1]["generated_text"] == _expected(reference, "lora adapters", "qv")


def test_unknown_adapter_is_424_before_any_work(env):
    """DJL answers 424 ("has not been registered") before the handler runs."""
    server, _, _, _ = env
    for kwargs in (
        {"json": {"inputs": "x", "adapters": "nope"}},
        {"json": {"inputs": "x"}, "params": {"adapter": "nope"}},
        {"json": {"inputs": "x"}, "headers": {"X-Amzn-SageMaker-Custom-Attributes": "adapter=nope"}},
    ):
        reply = server.client.post("/invocations", **kwargs)
        assert reply.status_code == 424 and "nope" in reply.json()["message"]


def test_sagemaker_adapter_identifier_header_wins(env):
    """DJL's LMI parser: ``X-Amzn-SageMaker-Adapter-Identifier`` over the body's ``adapters``."""
    server, _, reference, _ = env
    body = {"inputs": "hello world", "adapters": "", "parameters": PARAMS}
    for adapter, status in (("qv", 200), ("nope", 424)):
        reply = server.client.post(
            "/invocations", json=body, headers={"X-Amzn-SageMaker-Adapter-Identifier": adapter}
        )
        assert reply.status_code == status
    assert reply.json()["code"] == 424
    reply = server.client.post(
        "/invocations", json=body, headers={"X-Amzn-SageMaker-Adapter-Identifier": "qv"}
    )
    assert reply.json()["generated_text"] == _expected(reference, "hello world", "qv")


@pytest.mark.parametrize("adapter,fragment", [("dora", "lora_magnitude_vector"), ("big", "max_lora_rank")])
def test_unsupported_adapters_refused_at_registration(env, adapter, fragment):
    server, _, _, paths = env
    reply = server.client.post(f"/models/tiny/adapters?name={adapter}&src={paths[adapter]}")
    assert reply.status_code == 400 and fragment in reply.json()["message"]
    assert server.client.get(f"/models/tiny/adapters/{adapter}").status_code == 404


@pytest.mark.parametrize(
    "body,status",
    [
        ({"inputs": 5}, 400),
        ({"inputs": "x", "parameters": {"max_new_tokens": "many"}}, 400),
        ({"inputs": "x", "parameters": {"top_p": 3}}, 400),
        ({"inputs": ["a", "b"], "adapters": ["qv"]}, 400),
        ({"inputs": "x", "parameters": {"max_new_tokens": 100000}}, 400),
    ],
)
def test_bad_generation_requests(env, body, status):
    server, _, _, _ = env
    reply = server.client.post("/invocations", json=body)
    assert reply.status_code == status, reply.text
    assert server.client.post("/invocations", json={"inputs": "x", "parameters": PARAMS}).status_code == 200


def test_concurrent_clients_share_the_running_batch(env):
    """Requests from separate HTTP clients join one running batch. A long streamed request is
    started first and read up to its first token, so it is running while the others arrive
    (it has 1,500 steps to go); each of them must then report a batch of at least two."""
    server, _, _, _ = env
    long_body = {"inputs": "the", "stream": True, "parameters": {"max_new_tokens": 1500, "ignore_eos": True}}
    body = {"inputs": "the lazy dog", "parameters": {"max_new_tokens": 24, "ignore_eos": True}}

    def call(i):
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            reply = client.post("/invocations", json={**body, "adapters": ["", "qv"][i % 2]})
            return reply.json()["generated_text"], int(reply.headers["x-loraserve-peak-batch"])

    with (
        httpx.Client(base_url=server.base_url, timeout=300) as streamer,
        streamer.stream("POST", "/invocations", json=long_body) as long_reply,
    ):
        lines = long_reply.iter_lines()
        first = json.loads(next(line for line in lines if line))
        assert "token" in first, first
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(call, range(8)))
        remaining = [line for line in lines if line]
    assert len(remaining) == 1499  # the long request was not disturbed
    assert min(peak for _, peak in results) >= 2
    assert len({text for text, _ in results}) == 2  # base and adapter, each the same four times


def test_chat_schema(env):
    server, _, _, _ = env
    body = {"messages": [{"role": "user", "content": "hello"}], "parameters": PARAMS}
    reply = server.client.post("/invocations", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] == 8


def test_adapter_scales_and_mixtures_over_lmi_and_openai(env):
    """A mixture on LMI's ``adapters`` and OpenAI's ``lora`` gives what the engine gives for it;
    bad mixtures are 400s naming the problem, an unknown member a 424, before any work."""
    server, store, reference, _ = env
    client = server.client
    assert client.post(f"/models/tiny/adapters?name=b8&src={store / 'extra' / 'all8'}").status_code == 200
    mixture = [{"name": "qv", "scale": 0.5}, {"name": "b8", "scale": -1.0}]
    reference.register_adapter("b8", store / "extra" / "all8")
    expected = reference.generate(["hello world"], [(("qv", 0.5), ("b8", -1.0))], SamplingParams(**PARAMS))[0]
    body = {"inputs": "hello world", "adapters": mixture, "parameters": PARAMS}
    assert client.post("/invocations", json=body).json()["generated_text"] == expected.text
    completion = client.post(
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": "hello world",
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,
            "lora": mixture,
        },
    ).json()
    assert completion["choices"][0]["text"] == expected.text
    half = client.post("/invocations", json={**body, "adapters": [{"name": "qv", "scale": 0.0}]}).json()
    assert half["generated_text"] == _expected(reference, "hello world", None)  # scale 0: the base model
    for adapters, status, fragment in (
        ([{"name": "qv", "scale": "half"}], 400, "scale"),
        ([{"name": "qv", "weight": 1}], 400, "weight"),
        ([{"name": n} for n in ("qv", "b8", "qv")], 400, "more than once"),
        ([{"name": "qv"}] * 5, 400, "adapters"),
        ([{"name": "nope", "scale": 0.5}], 424, "nope"),
    ):
        reply = client.post("/invocations", json={**body, "adapters": adapters})
        assert reply.status_code == status and fragment in reply.json()["message"], reply.text
    assert client.delete("/models/tiny/adapters/b8").status_code == 200
