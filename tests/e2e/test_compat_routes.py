"""Other servers' adapter conventions on a real server, driven by their own clients where one
exists: TGI's ``text-generation`` client and LoRAX's client (``/``, ``/generate``,
``/generate_stream`` with ``adapter_id``), vLLM's runtime adapter loading and ``/health``,
SGLang's ``model="base:adapter"``, llama.cpp's ``/lora-adapters``. Tokens are configured, so
every call also shows which token its route takes."""

from __future__ import annotations

import json

import httpx
import pytest

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams
from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

openai = pytest.importorskip("openai")
API, ADMIN = {"Authorization": "Bearer api-tok"}, {"Authorization": "Bearer admin-tok"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from loraserve.testing.tiny import make_peft_adapter

    root = tmp_path_factory.mktemp("compat")
    store, base = make_engine_store(root)
    extra = make_peft_adapter(base, store / "tiny" / "more" / "sql", rank=4, seed=7)
    reference = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_lora_rank=8))
    reference.register_adapter("qv", store / "tiny" / "adapters" / "qv")
    reference.register_adapter("sql", extra)
    args = ["--model-store", str(store), "--api-token", "api-tok", "--management-token", "admin-tok"]
    with ServerProcess(args) as server:
        yield server, reference, extra


def greedy(reference, prompt, adapter, tokens=6):
    return reference.generate([prompt], [adapter], SamplingParams(max_new_tokens=tokens))[0].text


def sse_events(reply: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in reply.text.splitlines() if line.startswith("data:")]


# -- vLLM: /health, /v1/models/{id}, runtime loading --------------------------------------------
def test_health_is_open_and_empty(env):
    server, _, _ = env
    reply = server.client.get("/health")
    assert (reply.status_code, reply.content) == (200, b"")


def test_one_model_entry(env):
    server, _, _ = env
    base = server.client.get("/v1/models/tiny", headers=API).json()
    assert (base["id"], base["object"], base["owned_by"]) == ("tiny", "model", "loraserve")
    adapter = server.client.get("/v1/models/qv", headers=API).json()
    assert (adapter["id"], adapter["parent"], adapter["root"]) == ("qv", "tiny", "tiny")
    for missing in ("org/name", "tiny:qv:x", "nope"):
        reply = server.client.get(f"/v1/models/{missing}", headers=API)
        assert reply.status_code == 404, missing
        assert missing in reply.json()["error"]["message"]
    assert server.client.get("/v1/models/tiny").status_code == 401


def test_load_generate_unload(env):
    server, reference, extra = env
    http = server.client
    body = {"lora_name": "sql", "lora_path": str(extra)}
    assert http.post("/v1/load_lora_adapter", json=body, headers=API).status_code == 401  # management
    reply = http.post("/v1/load_lora_adapter", json=body, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    assert reply.text == "Success: LoRA adapter 'sql' added successfully."
    assert "sql" in {m["id"] for m in http.get("/v1/models", headers=API).json()["data"]}
    again = http.post("/v1/load_lora_adapter", json=body, headers=ADMIN)
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    inplace = http.post("/v1/load_lora_adapter", json={**body, "load_inplace": True}, headers=ADMIN)
    assert inplace.status_code == 200, inplace.text

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="api-tok")
    answer = client.completions.create(model="sql", prompt="the quick", max_tokens=6, temperature=0)
    assert answer.choices[0].text == greedy(reference, "the quick", "sql")

    reply = http.post("/v1/unload_lora_adapter", json={"lora_name": "sql"}, headers=ADMIN)
    assert (reply.status_code, reply.text) == (200, "Success: LoRA adapter 'sql' removed successfully.")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="sql", prompt="x", max_tokens=2)
    gone = http.post("/v1/unload_lora_adapter", json={"lora_name": "sql"}, headers=ADMIN)
    assert gone.status_code == 404 and "sql" in gone.json()["error"]["message"]


@pytest.mark.parametrize(
    "body,status,named",
    [
        ({"lora_name": "x", "lora_path": "/etc", "bogus": 1}, 400, "bogus"),
        ({"lora_name": "x"}, 400, "lora_path"),
        ({"lora_name": "x", "lora_path": "/etc"}, 403, "/etc"),  # outside the allowed adapter roots
        ({"lora_name": "x", "lora_path": "/d", "model": "nope"}, 404, "nope"),
    ],
)
def test_load_refusals(env, body, status, named):
    server, _, _ = env
    reply = server.client.post("/v1/load_lora_adapter", json=body, headers=ADMIN)
    assert reply.status_code == status, reply.text
    assert named in reply.json()["error"]["message"]


# -- SGLang / Ray Serve LLM: model="base:adapter" -----------------------------------------------
def test_base_colon_adapter(env):
    server, reference, _ = env
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="api-tok")
    answer = client.completions.create(model="tiny:qv", prompt="hello", max_tokens=6, temperature=0)
    assert answer.choices[0].text == greedy(reference, "hello", "qv")
    with pytest.raises(openai.NotFoundError, match="tiny"):
        client.completions.create(model="tiny:nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="other"):
        client.completions.create(model="other:qv", prompt="x", max_tokens=2)


# -- TGI / LoRAX: /, /generate, /generate_stream ------------------------------------------------
def test_text_generation_client(env):
    text_generation = pytest.importorskip("text_generation")
    server, reference, _ = env
    client = text_generation.Client(server.base_url, headers=API)
    answer = client.generate("the quick", max_new_tokens=6)
    assert answer.generated_text == greedy(reference, "the quick", None)
    assert answer.details.generated_tokens == len(answer.details.tokens) <= 6
    assert answer.details.finish_reason.value in ("length", "eos_token")
    events = list(client.generate_stream("the quick", max_new_tokens=6))
    assert "".join(e.token.text for e in events) == answer.generated_text
    assert events[-1].generated_text == answer.generated_text and events[-1].details is not None
    with pytest.raises(text_generation.errors.ValidationError, match="watermark"):
        client.generate("x", max_new_tokens=2, watermark=True)


def test_lorax_client_adapter_id(env):
    lorax = pytest.importorskip("lorax")
    server, reference, _ = env
    client = lorax.Client(server.base_url, headers=API)
    answer = client.generate("hello", adapter_id="qv", max_new_tokens=6, details=True)
    assert answer.generated_text == greedy(reference, "hello", "qv")
    streamed = "".join(
        e.token.text for e in client.generate_stream("hello", adapter_id="qv", max_new_tokens=6)
    )
    assert streamed == answer.generated_text


def test_generate_routes_with_adapter_id(env):
    server, reference, _ = env
    body = {
        "inputs": "hello",
        "parameters": {"adapter_id": "qv", "max_new_tokens": 6, "details": True, "return_full_text": True},
    }
    reply = server.client.post("/generate", json=body, headers=API)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["generated_text"] == "hello" + greedy(reference, "hello", "qv")
    token = answer["details"]["tokens"][0]
    assert set(token) == {"id", "text", "logprob", "special"} and answer["details"]["prefill"] == []
    stream = server.client.post("/generate_stream", json=body, headers=API)
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = sse_events(stream)
    assert [e["generated_text"] for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1]["generated_text"] == answer["generated_text"]
    assert events[-1]["details"]["generated_tokens"] == len(events)


@pytest.mark.parametrize(
    "body,status,named",
    [
        ({"inputs": "x", "bogus": 1}, 400, "bogus"),
        ({"inputs": "x", "parameters": {"watermark": True}}, 400, "watermark"),
        ({"inputs": "x", "parameters": {"best_of": 2}}, 400, "best_of"),
        ({"inputs": "x", "parameters": {"typical_p": 0.5}}, 400, "typical_p"),
        ({"inputs": "x", "parameters": {"adapter_source": "s3", "adapter_id": "qv"}}, 400, "adapter_source"),
        ({"inputs": "x", "parameters": {"made_up": 1}}, 400, "made_up"),
        ({"inputs": "x", "parameters": {"adapter_id": "nope"}}, 404, "nope"),
    ],
)
def test_generate_refusals(env, body, status, named):
    server, _, _ = env
    reply = server.client.post("/generate", json=body, headers=API)
    assert reply.status_code == status, reply.text
    assert named in reply.json()["error"]
    assert server.client.post("/generate", json=body).status_code == 401


# -- llama.cpp: /lora-adapters ------------------------------------------------------------------
def test_lora_adapters(env):
    server, _, _ = env
    listed = server.client.get("/lora-adapters", headers=ADMIN).json()
    assert listed[0]["id"] == 0 and listed[0]["scale"] == 1.0 and listed[0]["path"].endswith("qv")
    assert server.client.get("/lora-adapters", headers=API).status_code == 401
    refused = server.client.post("/lora-adapters", json=[{"id": 0, "scale": 0.5}], headers=ADMIN)
    assert refused.status_code == 405 and "lora" in refused.json()["error"]["message"]


def _declared_huge(base_url: str, path: str) -> httpx.Response:
    """A POST that declares a terabyte body (and sends none): http.client lets us lie."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.putrequest("POST", path)
    for name, value in {**API, "Content-Type": "application/json", "Content-Length": str(10**12)}.items():
        connection.putheader(name, value)
    connection.endheaders()
    raw = connection.getresponse()
    reply = httpx.Response(raw.status, content=raw.read())
    connection.close()
    return reply


def test_every_v1_error_is_in_openai_shape_the_middleware_s_included(env):
    """The official client reads ``error.message``: 401, 413, 404 and 400 alike."""
    server, _, _ = env
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    replies = [
        server.client.post("/v1/completions", json=body),  # no token: 401 from the middleware
        _declared_huge(server.base_url, "/v1/completions"),  # 413 from the body limit
        server.client.post("/v1/completions", headers=API, json={**body, "model": "nope"}),
        server.client.post("/v1/completions", headers=API, json={**body, "frobnicate": 1}),
        server.client.get("/v1/no-such-route", headers=API),
    ]
    assert [r.status_code for r in replies] == [401, 413, 404, 400, 404]
    for reply in replies:
        error = reply.json()["error"]
        assert error["message"] and error["code"] == reply.status_code
    assert "frobnicate" in replies[3].json()["error"]["message"]
    djl = server.client.post("/predictions/tiny", json={"inputs": "x"})  # DJL's routes keep DJL's shape
    assert djl.status_code == 401 and djl.json()["code"] == 401
