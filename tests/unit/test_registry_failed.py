"""The registry's failed state: kept with its reason, shown, updatable and removable, never
replayed, and never lost from the persisted registry."""

from __future__ import annotations

import pytest

from loraserve.adapters.registry import AdapterRecord, AdapterRegistry, AdapterState
from loraserve.config import ServerConfig
from loraserve.errors import AdapterNotFoundError, ConflictError
from loraserve.serving.model_manager import ModelManager


def _registry(*names: str) -> AdapterRegistry:
    registry = AdapterRegistry()
    for name in names:
        registry.begin_register(AdapterRecord(name=name, src=f"/s/{name}", path=f"/p/{name}"))
        registry.finish_register(name)
    return registry


def test_marked_failed_keeps_the_registration_and_its_reason():
    registry = _registry("a", "b")
    registry.mark_failed("a", "source /p/a does not exist")
    assert "a" in registry and len(registry) == 2
    assert registry.get("a").describe()["state"] == "failed"
    assert registry.get("a").describe()["error"] == "source /p/a does not exist"
    assert [r.name for r in registry.ready_records()] == ["b"]  # not replayed on new workers
    with pytest.raises(AdapterNotFoundError, match="failed"):
        registry.ready("a")


def test_failed_adapter_can_be_updated_back_to_ready():
    registry = _registry("a")
    registry.mark_failed("a", "gone")
    assert registry.settled("a").state is AdapterState.FAILED
    registry.finish_register("a")
    assert registry.ready("a").error is None


def test_failed_unregister_that_fails_goes_back_to_failed():
    registry = _registry("a")
    registry.mark_failed("a", "gone")
    record, previous = registry.begin_unregister("a")
    with pytest.raises(ConflictError):
        registry.settled("a")  # an operation is under way
    registry.abort_unregister("a", previous)
    assert record.state is AdapterState.FAILED and record.error == "gone"


def test_keep_failed_holds_a_registration_that_never_loaded():
    registry = _registry("b")
    record = registry.keep_failed(AdapterRecord(name="a", src="/s/a", path=""), "cannot load")
    assert registry.get("a") is record and record.state is AdapterState.FAILED


class _Model:
    def __init__(self, registry: AdapterRegistry) -> None:
        self.name, self.registry = "m", registry


def test_persist_keeps_failed_adapters(tmp_path):
    manager = ModelManager(ServerConfig(state_dir=tmp_path))
    registry = _registry("ok")
    registry.keep_failed(AdapterRecord(name="broken", src="/s/broken", path=""), "gone")
    manager.persist(_Model(registry))  # type: ignore[arg-type]
    saved = ModelManager(ServerConfig(state_dir=tmp_path))._saved
    assert [a["name"] for a in saved["models"]["m"]["adapters"]] == ["ok", "broken"]
