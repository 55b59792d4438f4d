"""/metrics: per-adapter counters move after calls; engine figures are exposed."""

from __future__ import annotations

import re

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_per_adapter(tmp_path):
    store, _ = make_engine_store(tmp_path)
    with ServerProcess(["--model-store", str(store)]) as server:
        client = server.client
        before = client.get("/metrics").text
        assert sample(before, "loraserve_requests_total", model="tiny", adapter="qv") == 0
        body = {"inputs": "hello", "parameters": {"max_new_tokens": 5, "ignore_eos": True}}
        for _ in range(2):
            assert client.post("/invocations", json={**body, "adapters": "qv"}).status_code == 200
        assert client.post("/invocations", json=body).status_code == 200
        with client.stream("POST", "/invocations", json={**body, "adapters": "qv", "stream": True}) as r:
            assert len([line for line in r.iter_lines() if line]) == 5
        assert client.post("/invocations", json={**body, "parameters": {"top_p": 7}}).status_code == 400
        after = client.get("/metrics").text
        assert sample(after, "loraserve_requests_total", model="tiny", adapter="qv", code="200") == 3
        assert sample(after, "loraserve_requests_total", model="tiny", adapter="", code="200") == 1
        assert sample(after, "loraserve_generated_tokens_total", model="tiny", adapter="qv") == 15
        assert sample(after, "loraserve_generated_tokens_total", model="tiny", adapter="") == 5
        assert sample(after, "loraserve_request_errors_total", model="tiny", adapter="") == 1
        assert sample(after, "loraserve_time_to_first_token_seconds_count", model="tiny", adapter="qv") == 1
        assert sample(after, "loraserve_request_latency_seconds_count", model="tiny", adapter="qv") == 3
        assert sample(after, "loraserve_adapters", model="tiny", tier="registered") == 1
        assert sample(after, "loraserve_adapter_loads_total", model="tiny") >= 1
        assert "loraserve_kv_cache_usage_ratio" in after and "loraserve_running_batch_size" in after
