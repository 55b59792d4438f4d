"""Per-adapter residency on a real engine (the tiny model, two slots so adapters are evicted):
the residency gauges and load-latency histogram move as adapters are registered, loaded,
evicted, pinned, unregistered and updated, and the describe, list, /v1/models and console answers carry
the same figures."""

from __future__ import annotations

from loraserve.testing.server import ServerProcess
from loraserve.testing.tiny import make_peft_adapter
from tests.e2e.helpers import make_engine_store
from tests.e2e.test_metrics import sample

PROPERTIES = "option.max_lora_rank=8\noption.max_model_len=128\noption.max_loras=2\noption.max_cpu_loras=2\n"
BODY = {"inputs": "hello", "parameters": {"max_new_tokens": 2, "ignore_eos": True}}


def resident(text: str, adapter: str, tier: str) -> float:
    return sample(text, "loraserve_adapter_resident", model="tiny", adapter=adapter, tier=tier)


def test_residency_follows_loads_evictions_and_pins(tmp_path):
    store, base = make_engine_store(tmp_path, PROPERTIES)
    for i, name in enumerate(("a", "b", "p")):
        make_peft_adapter(base, store / "extra" / name, rank=4, seed=10 + i)
    with ServerProcess(["--model-store", str(store)], log_path=tmp_path / "server.log") as server:
        client = server.client
        for name in ("a", "b"):
            src = store / "extra" / name
            assert (
                client.post(f"/models/tiny/adapters?name={name}&src={src}&preload=false").status_code == 200
            )
        text = client.get("/metrics").text
        assert (
            sample(text, "loraserve_adapter_load_seconds_count", model="tiny", source="local") == 3
        )  # qv at start-up
        assert resident(text, "a", "registered") == 1 and resident(text, "a", "resident") == 0

        assert client.post("/invocations", json={**BODY, "adapters": "a"}).status_code == 200
        assert resident(client.get("/metrics").text, "a", "resident") == 1
        described = client.get("/models/tiny/adapters/a").json()["residency"]
        assert described["tier"] == "resident" and described["slot_loads"] == 1
        assert described["loads"] >= 1 and described["last_load_s"] >= 0 and described["last_load_at"] > 0

        src = store / "extra" / "p"
        assert client.post(f"/models/tiny/adapters?name=p&src={src}&pin=true").status_code == 200
        assert client.post("/invocations", json={**BODY, "adapters": "b"}).status_code == 200  # a's slot
        text = client.get("/metrics").text
        assert resident(text, "p", "resident") == 1 and resident(text, "b", "resident") == 1
        assert sample(text, "loraserve_adapter_pinned", model="tiny", adapter="p") == 1
        assert resident(text, "a", "resident") == 0
        a = client.get("/models/tiny/adapters/a").json()["residency"]
        assert a["tier"] != "resident" and a["slot_evictions"] == 1 and not a["pinned"]

        listed = {r["name"]: r for r in client.get("/models/tiny/adapters").json()["adapters"]}
        assert listed["p"]["residency"]["pinned"] and listed["b"]["tier"] == "resident"
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["p"]["loraserve_residency"]["tier"] == "resident"
        assert "loraserve_residency" not in models["tiny"]  # the base model's entry is as before
        console = client.get("/console/state").json()["models"][0]["adapters"]
        assert {r["name"]: r["residency"]["slot_evictions"] for r in console}["a"] == 1

        assert client.delete("/models/tiny/adapters/a").status_code == 200
        text = client.get("/metrics").text
        assert 'adapter="a"' not in text and resident(text, "b", "resident") == 1
        before = client.get("/models/tiny/adapters/b").json()["residency"]
        assert client.post("/models/tiny/adapters/b/update").status_code == 200  # a new version
        after = client.get("/models/tiny/adapters/b").json()["residency"]
        assert after["identity"] != before["identity"] and after["slot_loads"] == 0 == after["slot_evictions"]
        text = client.get("/metrics").text
        assert (
            sample(text, "loraserve_adapter_load_seconds_count", model="tiny", source="local") == 5
        )  # qv, a, b, p, b again
        assert resident(text, "b", "resident") == 0 and resident(text, "b", after["tier"]) == 1
