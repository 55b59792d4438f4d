"""The engine's own figures as Prometheus series (running batch, KV-cache use, prefix cache,
preemptions, adapter tiers, loads, evictions), from the latest statistics each model's worker
gave; ``metrics.ServerMetrics`` gathers them at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class EngineCollector:
    """Exposes the latest engine statistics gathered from each model's worker."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, int] = {}

    def collect(self) -> Iterator[Any]:
        gauges = {
            "running": GaugeMetricFamily(
                "loraserve_running_batch_size", "Sequences in the running batch", labels=["model"]
            ),
            "waiting": GaugeMetricFamily(
                "loraserve_waiting_requests", "Requests waiting in the engine", labels=["model"]
            ),
            "kv_usage": GaugeMetricFamily(
                "loraserve_kv_cache_usage_ratio", "KV-cache blocks in use", labels=["model"]
            ),
            "kv_blocks_free": GaugeMetricFamily(
                "loraserve_kv_cache_free_blocks",
                "KV-cache blocks free (cached prefixes among them stay reusable)",
                labels=["model"],
            ),
            "kv_blocks_total": GaugeMetricFamily(
                "loraserve_kv_cache_blocks", "KV-cache blocks in the pool", labels=["model"]
            ),
            "prefix_cache_hit_rate": GaugeMetricFamily(
                "loraserve_prefix_cache_hit_rate",
                "Prompt tokens found in the prefix cache / looked up",
                labels=["model"],
            ),
        }
        counters = {
            "preemptions": CounterMetricFamily(
                "loraserve_preemptions",
                "Running requests preempted for KV-cache blocks (recomputed later)",
                labels=["model"],
            ),
            "prefix_cache_queried_tokens": CounterMetricFamily(
                "loraserve_prefix_cache_queried_tokens",
                "Prompt tokens looked up in the prefix cache",
                labels=["model"],
            ),
            "prefix_cache_hit_tokens": CounterMetricFamily(
                "loraserve_prefix_cache_hit_tokens",
                "Prompt tokens served from the prefix cache",
                labels=["model"],
            ),
        }
        per_model: dict[str, GaugeMetricFamily | CounterMetricFamily] = {**gauges, **counters}
        tiers = GaugeMetricFamily("loraserve_adapters", "Adapters per memory tier", labels=["model", "tier"])
        loads = CounterMetricFamily(
            "loraserve_adapter_loads", "Adapters loaded into compute slots", labels=["model"]
        )
        evictions = CounterMetricFamily(
            "loraserve_adapter_evictions", "Adapters evicted from slots", labels=["model"]
        )
        refs = GaugeMetricFamily(
            "loraserve_adapter_references", "Adapter references held by sequences", labels=["model"]
        )
        steps = CounterMetricFamily("loraserve_engine_steps", "Engine steps run", labels=["model"])
        queue = GaugeMetricFamily("loraserve_queue_depth", "Requests queued for a worker", labels=["model"])
        for model, depth in self.queues.items():
            queue.add_metric([model], depth)
        for model, stats in self.stats.items():
            for key, family in per_model.items():
                family.add_metric([model], stats.get(key, 0))
            for tier in ("registered", "in_memory", "resident", "pinned"):
                tiers.add_metric([model, tier], stats.get("adapters", {}).get(tier, 0))
            loads.add_metric([model], stats.get("adapters", {}).get("loads", 0))
            evictions.add_metric([model], stats.get("adapters", {}).get("evictions", 0))
            refs.add_metric([model], stats.get("adapter_refs", 0))
            steps.add_metric([model], stats.get("steps", 0))
        yield from (*per_model.values(), tiers, loads, evictions, refs, steps, queue)
