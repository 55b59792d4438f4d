"""Per-adapter residency series and adapter load latency, for routers and autoscalers:

- ``loraserve_adapter_resident{model,adapter,tier}``: 1 for the tier an adapter is in, 0 for
  the others (``wire.control.ADAPTER_TIERS``), from each engine's latest figures;
- ``loraserve_adapter_pinned{model,adapter}``: 1 while it is pinned;
- ``loraserve_adapter_load_seconds{model,source}``: a registration or update as the API process
  timed it, by the kind of its source (local, archive, http, s3).

Adapter label values are bounded as the request series' are: ``ServerMetrics`` names each
adapter through its ``max_adapter_labels`` cap, so past it adapters share "other", whose gauges
count them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily

from loraserve.adapters.archives import ARCHIVE_SUFFIXES
from loraserve.adapters.remote import is_remote
from loraserve.adapters.s3 import is_s3
from loraserve.wire.control import ADAPTER_TIERS

# registrations read weights, unpack archives and may download them: seconds to minutes
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
Labelled = dict[str, list[tuple[str, dict[str, Any]]]]  # model → (adapter label, residency)


def source_kind(src: str) -> str:
    """An adapter source's kind, a bounded label: s3, http, archive or local (a directory)."""
    if is_s3(src):
        return "s3"
    if is_remote(src):
        return "http"
    return "archive" if urlparse(src).path.lower().endswith(ARCHIVE_SUFFIXES) else "local"


class ResidencyCollector:
    """The residency gauges, from the figures ``AdapterMetrics.label`` left (at scrape time)."""

    def __init__(self) -> None:
        self.adapters: Labelled = {}

    def collect(self) -> Iterator[Any]:
        resident = GaugeMetricFamily(
            "loraserve_adapter_resident",
            "Adapters in each memory tier (1 for the tier an adapter is in; 'other' counts)",
            labels=["model", "adapter", "tier"],
        )
        pinned = GaugeMetricFamily(
            "loraserve_adapter_pinned", "Adapters pinned to a compute slot", labels=["model", "adapter"]
        )
        for model, adapters in self.adapters.items():
            tiers: dict[tuple[str, str], int] = {}
            pins: dict[str, int] = {}
            for label, figures in adapters:
                for tier in ADAPTER_TIERS:
                    tiers[label, tier] = tiers.get((label, tier), 0) + (figures.get("tier") == tier)
                pins[label] = pins.get(label, 0) + bool(figures.get("pinned"))
            for (label, tier), count in tiers.items():
                resident.add_metric([model, label, tier], count)
            for label, count in pins.items():
                pinned.add_metric([model, label], count)
        yield from (resident, pinned)


class AdapterMetrics:
    """The per-adapter series a ``ServerMetrics`` adds to its registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.load_seconds = Histogram(
            "loraserve_adapter_load_seconds",
            "Adapter registration and update latency in the server, by source kind",
            ["model", "source"],
            buckets=LOAD_BUCKETS,
            registry=registry,
        )
        self.residency = ResidencyCollector()
        registry.register(self.residency)
        self._timed: set[tuple[str, str]] = set()  # (model, source) series, pruned with their model

    def loaded(self, model: str, src: str, seconds: float) -> None:
        """A registration or update of one of ``model``'s adapters from ``src`` succeeded."""
        kind = source_kind(src)
        self._timed.add((model, kind))
        self.load_seconds.labels(model, kind).observe(seconds)

    def label(self, stats: dict[str, dict[str, Any]], claim: Callable[[str, str], str]) -> None:
        """Each model's adapter residency (its engine's latest figures) under bounded labels:
        ``claim`` (``ServerMetrics``) gives an adapter its name or "other" past the cap."""
        self.residency.adapters = {
            model: [(claim(model, name), f) for name, f in figures.get("adapter_residency", {}).items()]
            for model, figures in stats.items()
        }

    def prune(self, served: set[str]) -> None:
        """Remove the load-latency series of models no longer served."""
        for model, kind in [key for key in self._timed if key[0] not in served]:
            self._timed.discard((model, kind))
            with contextlib.suppress(KeyError):
                self.load_seconds.remove(model, kind)
