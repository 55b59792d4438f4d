"""One schema for a saved registration: what ``loraserve serve`` writes, the Ray ingress's
shared store reads, and the other way round (one state directory serves both)."""

from __future__ import annotations

import json

from loraserve.adapters.registry import AdapterOrigin, AdapterRecord, AdapterState
from loraserve.adapters.saved import entry_of, record_of, removed_startup, saved_records
from loraserve.config import ServerConfig
from loraserve.ray_serve.adapter_store import SharedAdapterStore
from loraserve.serving.model_manager import ModelManager


def test_an_entry_round_trips_and_old_entries_still_load():
    record = AdapterRecord(
        name="a",
        src="s3-like/src",
        path="/resolved",
        preload=False,
        pin=True,
        options={"k": "v"},
        origin=AdapterOrigin.API,
        version=3,
        registered_at=5.0,
    )
    back = record_of(json.loads(json.dumps(entry_of(record))))
    assert (back.name, back.src, back.path, back.preload, back.pin, back.options, back.version) == (
        "a",
        "s3-like/src",
        "/resolved",
        False,
        True,
        {"k": "v"},
        3,
    )
    assert back.state is AdapterState.READY and back.registered_at == 5.0
    old = record_of({"name": "b", "src": "/b"})  # a file from before path/origin were saved
    assert old.path == "/b" and old.origin is AdapterOrigin.API and old.preload and not old.pin


def test_what_serve_saves_the_ray_store_reads(tmp_path):
    state = tmp_path / ".loraserve" / "state.json"
    manager = ModelManager(ServerConfig(state_dir=tmp_path))
    record = AdapterRecord(name="a", src="/src/a.zip", path="/extracted/a", state=AdapterState.READY)
    gone = AdapterRecord(name="startup1", src="/m/adapters/startup1", path="", origin=AdapterOrigin.STARTUP)

    class Model:  # the part of ModelService that persist reads
        name = "m"

        class registry:
            @staticmethod
            def records():
                return [record]

    manager.persist(Model(), removed=gone)  # type: ignore[arg-type]
    store = SharedAdapterStore(state, "m")
    assert store.refs()["a"].path == "/extracted/a" and store.removed_startup() == {"startup1"}
    section = json.loads(state.read_text())["models"]["m"]
    assert [r.name for r in saved_records(section)] == ["a"] and removed_startup(section) == {"startup1"}
