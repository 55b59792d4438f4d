"""OpenAI ``model`` names: an adapter name shared by several models is never guessed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from loraserve.adapters.registry import AdapterRecord, AdapterRegistry
from loraserve.api import openai
from loraserve.errors import BadRequestError


def _model(name: str, *adapters: str) -> SimpleNamespace:
    registry = AdapterRegistry()
    for adapter in adapters:
        registry.begin_register(AdapterRecord(name=adapter, src="/x", path="/x"))
        registry.finish_register(adapter)
    return SimpleNamespace(name=name, registry=registry, created=0.0, uses_builtin_engine=False)


@pytest.fixture
def two_models(monkeypatch):
    engines = [_model("base1", "shared", "only1"), _model("base2", "shared")]
    monkeypatch.setattr(openai, "engine_models", lambda _request: engines)
    return engines


def test_a_shared_adapter_name_is_refused_naming_the_models(two_models):
    with pytest.raises(BadRequestError) as raised:
        openai.resolve(None, "shared")  # type: ignore[arg-type]
    assert raised.value.status_code == 400
    assert "base1" in raised.value.message and "base2" in raised.value.message
    assert "<base>:<adapter>" in raised.value.message


def test_base_colon_adapter_and_unique_names_still_resolve(two_models):
    assert openai.resolve(None, "base2:shared") == (two_models[1], "shared")  # type: ignore[arg-type]
    assert openai.resolve(None, "only1") == (two_models[0], "only1")  # type: ignore[arg-type]


def test_models_lists_shared_adapters_with_their_base(two_models):
    ids = [entry["id"] for entry in asyncio.run(openai._entries(None))]  # type: ignore[arg-type]
    assert ids == ["base1", "base1:shared", "only1", "base2", "base2:shared"]
