"""Metric label cardinality: series leave with their adapter or model, and adapter names past
``max_adapter_labels`` share the "other" label."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

from prometheus_client import generate_latest

from loraserve.serving.metrics import ServerMetrics
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.frames import ReplyKind


def fake_model(name: str, adapters: set[str]) -> SimpleNamespace:
    async def infer(_wire, _fn="handle"):
        tokens = {"x-loraserve-generated-tokens": "2"}
        output = {"code": 200, "properties": tokens, "content": [], "message": "OK"}
        return WorkerReply(ReplyKind.DJL, output)

    return SimpleNamespace(name=name, registry=adapters, infer=infer)


def call(metrics: ServerMetrics, model: SimpleNamespace, adapter: str) -> None:
    asyncio.run(metrics.observe(model.name, adapter, model.infer({})))


def adapters_in(metrics: ServerMetrics) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return set(re.findall(r'adapter="([^"]*)"', text))


def test_series_leave_with_their_adapter_and_model():
    metrics = ServerMetrics()
    model = fake_model("m", {"a1", "a2"})
    for adapter in ("a1", "a2", ""):
        call(metrics, model, adapter)
    assert adapters_in(metrics) == {"a1", "a2", ""}
    model.registry.discard("a1")  # unregistered
    metrics.prune([model])
    assert adapters_in(metrics) == {"a2", ""}
    metrics.prune([])  # the model is gone
    assert adapters_in(metrics) == set()
    assert metrics.generated_tokens == 6  # the all-time total survives pruning


def test_adapter_labels_are_capped():
    metrics = ServerMetrics(max_adapter_labels=3)
    names = {f"a{i}" for i in range(10)}
    model = fake_model("m", names)
    for name in sorted(names):
        call(metrics, model, name)
    labels = adapters_in(metrics)
    assert len(labels - {"other"}) == 3 and "other" in labels
    call(metrics, model, "")  # the base model never counts against the cap
    assert "" in adapters_in(metrics)
