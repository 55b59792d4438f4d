"""Metric label cardinality: series leave with their adapter or model, and adapter names past
``max_adapter_labels`` share the "other" label (the residency gauges' as well); adapter load
latency by source kind."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from loraserve.serving.adapter_metrics import source_kind
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


def residency(tier: str, pinned: bool = False) -> dict:
    return {"tier": tier, "pinned": pinned}


def scrape(metrics: ServerMetrics, model: SimpleNamespace) -> str:
    """A scrape: ``refresh`` (the engine figures are already in place) then the text."""
    model.uses_builtin_engine, model.workers = False, SimpleNamespace(queue_length=0)  # no worker to ask
    asyncio.run(metrics.refresh([model]))
    return generate_latest(metrics.registry).decode()


def test_residency_labels_share_the_adapter_label_cap():
    """Adapters past ``max_adapter_labels`` (request series included) are counted under "other"."""
    metrics = ServerMetrics(max_adapter_labels=2)
    model = fake_model("m", {"a0", "a1", "a2", "a3"})
    call(metrics, model, "a3")  # a3 has request series: it keeps its name
    figures = {"a0": residency("resident", pinned=True), "a1": residency("in_memory")}
    figures |= {"a2": residency("registered"), "a3": residency("resident")}
    metrics.engine.stats = {"m": {"adapter_residency": figures}}
    text = scrape(metrics, model)
    rows = dict(
        re.findall(r'loraserve_adapter_resident\{(adapter="[^"]*",model="m",tier="\w+")\} (\S+)', text)
    )
    assert float(rows['adapter="a3",model="m",tier="resident"']) == 1
    assert float(rows['adapter="a0",model="m",tier="resident"']) == 1
    assert float(rows['adapter="a0",model="m",tier="in_memory"']) == 0
    assert float(rows['adapter="other",model="m",tier="in_memory"']) == 1  # a1
    assert float(rows['adapter="other",model="m",tier="registered"']) == 1  # a2
    assert 'loraserve_adapter_pinned{adapter="a0",model="m"} 1.0' in text
    assert adapters_in(metrics) == {"a0", "a3", "other"}
    model.registry.discard("a0")
    metrics.engine.stats = {"m": {"adapter_residency": {"a3": residency("resident")}}}
    assert 'adapter="a0"' not in scrape(metrics, model)


@pytest.mark.parametrize(
    "src,kind",
    [
        ("s3://bucket/a.tar.gz", "s3"),
        ("https://example.com/a.zip#sha256=00", "http"),
        ("HTTP://example.com/a.tgz", "http"),
        ("/adapters/a.tar.gz", "archive"),
        ("file:///adapters/a.zip", "archive"),
        ("/adapters/a", "local"),
        ("file:///adapters/a", "local"),
    ],
)
def test_source_kinds(src, kind):
    assert source_kind(src) == kind


def test_load_latency_by_source_leaves_with_its_model():
    metrics = ServerMetrics()
    metrics.adapter_loaded("m", "s3://bucket/a.tar.gz", 0.5)
    metrics.adapter_loaded("m", "/adapters/a", 0.1)
    text = generate_latest(metrics.registry).decode()
    assert 'loraserve_adapter_load_seconds_count{model="m",source="s3"} 1.0' in text
    assert 'loraserve_adapter_load_seconds_count{model="m",source="local"} 1.0' in text
    metrics.prune([])
    assert 'model="m"' not in generate_latest(metrics.registry).decode()
