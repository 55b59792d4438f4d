"""Per-replica figures in ``/metrics``: the ingress broadcasts ``stats`` to every live replica
at scrape time; per-replica series carry a ``replica`` label, model-level series are the sums."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def aggregate(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's engine figures summed over its replicas (KV use averaged), shaped as one
    engine reports them, so ``loraserve serve``'s model-level metrics keep their meaning."""
    engines = [r.get("engine", {}) for r in replicas]
    counts: dict[str, int] = {}
    for engine in engines:
        for key, value in engine.get("adapters", {}).items():
            counts[key] = counts.get(key, 0) + int(value)
    return {
        "running": sum(e.get("running", 0) for e in engines),
        "waiting": sum(e.get("waiting", 0) for e in engines),
        "kv_usage": sum(e.get("kv_usage", 0.0) for e in engines) / max(len(engines), 1),
        "adapters": counts,
    }


class ReplicaCollector:
    """``loraserve_replica_*`` series from the latest broadcast, one label set per replica."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.replicas: list[dict[str, Any]] = []
        self.routed: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Any]:
        labels = ["model", "replica"]
        running = GaugeMetricFamily(
            "loraserve_replica_running_batch_size", "Sequences in the replica's running batch", labels=labels
        )
        kv = GaugeMetricFamily(
            "loraserve_replica_kv_cache_usage_ratio", "KV-cache slots in use", labels=labels
        )
        held = GaugeMetricFamily(
            "loraserve_replica_adapter_revision",
            "Adapters the replica's engine holds (value: revision)",
            labels=[*labels, "adapter", "pinned"],
        )
        served = CounterMetricFamily(
            "loraserve_replica_requests", "Requests served by the replica", labels=[*labels, "adapter"]
        )
        routed = CounterMetricFamily(
            "loraserve_routed_requests",
            "Requests the ingress routed, by replica and multiplexed id",
            labels=[*labels, "model_id"],
        )
        for figures in self.replicas:
            replica, engine = figures["replica"], figures.get("engine", {})
            running.add_metric([self.model, replica], engine.get("running", 0))
            kv.add_metric([self.model, replica], engine.get("kv_usage", 0.0))
            for name, revision in figures.get("held", {}).items():
                pinned = str(name in figures.get("pinned", [])).lower()
                held.add_metric([self.model, replica, name, pinned], revision)
            for name, count in figures.get("served", {}).items():
                served.add_metric([self.model, replica, name], count)
        for (replica, model_id), count in self.routed.items():
            routed.add_metric([self.model, replica, model_id], count)
        yield from (running, kv, held, served, routed)
