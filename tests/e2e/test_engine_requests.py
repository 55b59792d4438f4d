"""Requests to the built-in engine through the server, as a hostile or impatient client sends
them: bad parameters are a JSON 400 naming the field; a client that leaves, or a request refused
after some of its prompts were submitted, stops its sequences (KV slots and adapter references
come back); an oversized prompt is refused before it is tokenized."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

LONG = 8000  # tokens: minutes of generation if nothing stops it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    store, _ = make_engine_store(
        root,
        "option.max_lora_rank=8\noption.max_model_len=8192\noption.max_prompt_chars=200000\n",
        max_positions=8192,
    )
    with ServerProcess(["--model-store", str(store)], log_path=root / "server.log") as running:
        yield running


def engine_figures(server) -> dict[str, float]:
    text = server.client.get("/metrics").text
    wanted = {
        "loraserve_running_batch_size",
        "loraserve_waiting_requests",
        "loraserve_kv_cache_usage_ratio",
        "loraserve_adapter_references",
        "loraserve_engine_steps_total",
        "loraserve_kv_cache_blocks",
        "loraserve_kv_cache_free_blocks",
        "loraserve_preemptions_total",
        "loraserve_prefix_cache_hit_rate",
        "loraserve_prefix_cache_queried_tokens_total",
    }
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name in wanted and s.labels.get("model") == "tiny"
    }


def idle(server, steps_before: float, deadline_s: float = 120) -> float:
    """Wait until the engine has nothing running; return the steps it ran since ``steps_before``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        figures = engine_figures(server)
        busy = figures.get("loraserve_running_batch_size", 1) + figures.get("loraserve_waiting_requests", 1)
        if not busy:
            assert figures["loraserve_kv_cache_usage_ratio"] == 0
            assert figures["loraserve_kv_cache_free_blocks"] == figures["loraserve_kv_cache_blocks"] > 0
            assert figures["loraserve_preemptions_total"] == 0
            assert 0 <= figures["loraserve_prefix_cache_hit_rate"] <= 1
            assert figures["loraserve_adapter_references"] == 0
            return figures["loraserve_engine_steps_total"] - steps_before
        time.sleep(0.1)
    raise AssertionError("the engine still had sequences running")


def steps_now(server) -> float:
    return engine_figures(server).get("loraserve_engine_steps_total", 0.0)


@pytest.mark.parametrize(
    "body,field",
    [
        ('{"inputs": "x", "parameters": {"do_sample": "false"}}', "parameters.do_sample"),
        ('{"inputs": "x", "parameters": {"ignore_eos": "false"}}', "parameters.ignore_eos"),
        ('{"inputs": "x", "parameters": {"details": "true"}}', "parameters.details"),
        ('{"inputs": "x", "stream": "false"}', "stream"),
        ('{"inputs": "x", "parameters": {"seed": 1180591620717411303424}}', "parameters.seed"),
        ('{"inputs": "x", "parameters": {"max_new_tokens": Infinity}}', "parameters.max_new_tokens"),
        ('{"inputs": "x", "parameters": {"temperature": NaN, "do_sample": true}}', "parameters.temperature"),
        ('{"inputs": "x", "parameters": {"repetition_penalty": 1e-40}}', "parameters.repetition_penalty"),
        ('{"inputs": []}', "inputs"),
    ],
)
def test_bad_lmi_parameters_are_a_400_naming_the_field(server, body, field):
    reply = server.client.post("/invocations", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["type"] == "BadRequestException" and f"{field}:" in reply.json()["message"]


@pytest.mark.parametrize(
    "route,body,field",
    [
        ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "stream": "false"}, "stream"),
        ("/v1/chat/completions", {"model": "qv", "messages": [{"role": "user"}], "seed": 2**70}, "seed"),
    ],
)
def test_bad_openai_parameters_are_a_400_naming_the_field(server, route, body, field):
    reply = server.client.post(route, json=body)
    assert reply.status_code == 400, reply.text
    assert f"{field}:" in reply.json()["error"]["message"]


def test_greedy_means_greedy(server):
    parameters = {"max_new_tokens": 6, "do_sample": False, "temperature": 5.0}
    body = {"inputs": "the quick", "parameters": parameters}
    answers = {server.client.post("/invocations", json=body).json()["generated_text"] for _ in range(3)}
    assert len(answers) == 1


def test_client_leaving_a_non_streaming_request_aborts_it(server):
    before = steps_now(server)
    body = {"inputs": "the", "adapters": "qv", "parameters": {"max_new_tokens": LONG, "ignore_eos": True}}
    with httpx.Client(base_url=server.base_url, timeout=1.0) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/invocations", json=body)
    assert idle(server, before) < LONG / 2


def test_client_leaving_a_stream_aborts_it(server):
    before = steps_now(server)
    body = {"model": "qv", "prompt": "the", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream("POST", "/v1/completions", json=body) as reply,
    ):
        first = next(line for line in reply.iter_lines() if line)
        assert first.startswith("data: ")
    assert idle(server, before) < LONG / 2


def test_a_refused_input_stops_the_inputs_already_submitted(server):
    before = steps_now(server)
    too_long = "the quick brown fox " * 3000  # more tokens than max_model_len
    body = {"inputs": ["the", too_long], "parameters": {"max_new_tokens": LONG - 10, "ignore_eos": True}}
    reply = server.client.post("/invocations", json=body)
    assert reply.status_code == 400 and "max_model_len" in reply.json()["message"]
    assert idle(server, before) < LONG / 2


def test_an_oversized_prompt_is_refused_before_tokenizing(server):
    huge = "x" * (4 * 1024 * 1024)
    reply = server.client.post("/invocations", json={"inputs": huge})
    assert reply.status_code == 400 and "max_prompt_chars" in reply.json()["message"]
    chat = server.client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": huge}]}
    )
    assert chat.status_code == 400 and "max_prompt_chars" in chat.json()["error"]["message"]
    assert server.client.get("/metrics").status_code == 200
    streamed = server.client.post(
        "/invocations", json={"inputs": "the", "parameters": {"max_new_tokens": 2}, "stream": True}
    )
    assert [json.loads(line)["token"] for line in streamed.text.splitlines()][-1]["log_prob"] <= 0
