"""What a user reads in the server's output: one ready banner with the URLs, one line per
request (as a JSON object with ``--log-format json``) with its model, adapter and tokens, and
no line for health probes; ``/ping`` says why it is not ready."""

from __future__ import annotations

import json
import time

import httpx

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store


def test_one_json_line_per_request_a_ready_banner_and_quiet_probes(tmp_path):
    store, _ = make_engine_store(tmp_path)
    log = tmp_path / "server.log"
    with ServerProcess(["--model-store", str(store), "--log-format", "json"], log_path=log) as server:
        for _ in range(5):
            assert server.client.get("/ping").status_code == 200
        body = {"inputs": "hi", "adapters": "qv", "parameters": {"max_new_tokens": 3}}
        assert server.client.post("/predictions/tiny", json=body).status_code == 200
        assert server.client.post("/predictions/tiny", json={"inputs": 5}).status_code == 400
        # ?adapter=, misspelt: the base model would answer, as if it had worked
        typo = server.client.post("/predictions/tiny?adapters=qv", json={"inputs": "hi"})
        assert typo.status_code == 400 and "adapters" in typo.json()["message"]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    requests = [r for r in records if r.get("logger") == "loraserve.access"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/predictions/tiny", 200),
        ("POST", "/predictions/tiny", 400),
        ("POST", "/predictions/tiny", 400),
    ]
    assert requests[0]["model"] == "tiny" and requests[0]["adapter"] == "qv" and requests[0]["tokens"] == 3
    assert requests[0]["latency_ms"] > 0
    (banner,) = [r["message"] for r in records if "ready: API http://" in r.get("message", "")]
    assert "/v1" in banner and "/console" in banner and "tiny" in banner
    assert not any("/ping" in r.get("message", "") for r in records)  # probes write nothing


def test_ping_says_why_it_is_not_ready(tmp_path):
    store, _ = make_engine_store(tmp_path)
    (store / "tiny" / "serving.properties").write_text("option.model_id=/does/not/exist\n")
    server = ServerProcess(["--model-store", str(store)])
    server.wait_ready = lambda: None  # it never becomes ready: /ping is polled here instead
    with server:
        deadline = time.monotonic() + 120
        while True:
            try:
                reply = server.client.get("/ping")
            except httpx.TransportError:
                reply = None
            if reply is not None and "model tiny" in reply.json().get("reason", ""):
                break
            assert time.monotonic() < deadline, "no reason given"
            time.sleep(0.2)
        assert reply.status_code == 503 and "does/not/exist" in reply.json()["reason"]
