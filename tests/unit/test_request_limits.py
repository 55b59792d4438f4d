"""Request bounds on every route: body size (declared and streamed) and JSON nesting depth."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException

from loraserve.api.app import create_app
from loraserve.api.limits import JsonDepthGuard, loads_bounded
from loraserve.config import ServerConfig

BASE = "http://127.0.0.1:8080"
DEEP = b"[" * 100_000 + b"]" * 100_000


def client(**settings) -> TestClient:
    return TestClient(create_app(ServerConfig(**settings)), base_url=BASE)


@pytest.mark.parametrize(
    "chunks,depth_ok",
    [
        ([b'{"a": [1, {"b": 2}]}'], True),
        ([b"[[[["], False),
        ([b'"[[[[[[[[" '], True),  # brackets in a string do not count
        ([b'"\\"[[[[[[" '], True),  # nor after an escaped quote
        ([b'"abc\\', b'"[[[[[[["'], True),  # an escape split across chunks
        ([b"[[", b"[", b"["], False),
        ([b"[]" * 50], True),
    ],
)
def test_depth_guard(chunks, depth_ok):
    guard = JsonDepthGuard(limit=3)
    try:
        for chunk in chunks:
            guard.feed(chunk)
    except HTTPException as exc:
        assert exc.status_code == 400 and not depth_ok
    else:
        assert depth_ok


def test_loads_bounded():
    assert loads_bounded('{"a": [1]}', 4) == {"a": [1]}
    with pytest.raises(HTTPException):
        loads_bounded(DEEP, 64)
    with pytest.raises(ValueError):
        loads_bounded("{", 4)


@pytest.mark.parametrize("method,path", [("post", "/models"), ("post", "/v1/chat/completions")])
def test_deep_json_is_a_400(method, path):
    """Routes that parse a body before any lookup; the e2e tests send one to a model's routes."""
    reply = getattr(client(), method)(path, content=DEEP, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert "nested" in (body["error"]["message"] if path.startswith("/v1/") else body["message"])


@pytest.mark.parametrize(
    "path",
    ["/models", "/models/m/adapters", "/workflows", "/predictions/m", "/v1/completions", "/no/such/route"],
)
def test_declared_body_size_is_bounded_on_every_route(path):
    api = client(max_request_bytes=1000)
    body = json.dumps({"url": "x" * 2000}).encode()
    reply = api.post(path, content=body, headers={"Content-Type": "application/json"})
    body = reply.json()
    assert reply.status_code == 413
    assert (body["error"] if path.startswith("/v1/") else body)["type"] == "PayloadTooLargeException"


@pytest.mark.parametrize("path", ["/models", "/v1/completions"])
def test_streamed_body_size_is_bounded(path):
    """Without Content-Length the bytes are counted as a route reads them."""
    api = client(max_request_bytes=1000)

    def chunked():
        for _ in range(4):
            yield b" " * 400

    reply = api.post(path, content=chunked(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413, reply.text


def test_worker_counts_are_bounded(tmp_path):
    api = client(model_store=tmp_path, max_workers_per_model=4)
    reply = api.post(f"/models?url={tmp_path}/m&min_worker=100000")
    assert reply.status_code == 400 and "max_workers_per_model" in reply.json()["message"]
    reply = api.post("/models", json={"url": f"{tmp_path}/m", "max_worker": 5})
    assert reply.status_code == 400 and "max_workers_per_model" in reply.json()["message"]
