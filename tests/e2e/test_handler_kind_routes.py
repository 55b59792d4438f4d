"""A model whose serving.properties names DJL's own LLM handler (``option.entryPoint=
djl_python.huggingface``) runs the built-in engine in its worker, so the front must treat it as
one: /v1 routes and engine metrics (it used to be treated as a custom handler)."""

from __future__ import annotations

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

pytestmark = pytest.mark.e2e


def test_djl_huggingface_entry_point_gets_openai_routes_and_engine_metrics(tmp_path):
    properties = (
        "option.entryPoint=djl_python.huggingface\noption.max_lora_rank=8\noption.max_model_len=128\n"
    )
    store, _ = make_engine_store(tmp_path, properties=properties)
    with ServerProcess(["--model-store", str(store)]) as server:
        listed = {m["id"] for m in server.client.get("/v1/models").json()["data"]}
        assert {"tiny", "qv"} <= listed
        reply = server.client.post("/v1/completions", json={"model": "qv", "prompt": "hi", "max_tokens": 3})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 3
        assert 'loraserve_running_batch_size{model="tiny"}' in server.client.get("/metrics").text
