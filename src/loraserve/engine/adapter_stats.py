"""Per-adapter residency figures, for routers and autoscalers: where an adapter version lives
and what moving it costs. One ``AdapterStats`` per registration (an update is a new identity,
so a new version starts from zero and the old one's events stay with the old one).

Tiers keep the names the describe response and ``loraserve_adapters{tier}`` already use
(``wire.control.ADAPTER_TIERS``): ``resident`` (a compute slot), ``in_memory`` (CPU memory) and
``registered`` (on disk only: its source; a remote one was fetched to disk at registration).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class AdapterStats:
    """What happened to one adapter version. ``loads`` count reads of its weights from disk into
    memory (the read that validates a registration included); ``slot_loads`` copies into a compute
    slot; evictions are counted where they happen, from a slot and from memory."""

    loads: int = 0
    slot_loads: int = 0
    slot_evictions: int = 0
    memory_evictions: int = 0
    last_load_s: float | None = None
    last_load_at: float | None = None  # Unix time the last load ended

    def loaded(self, seconds: float) -> None:
        self.loads += 1
        self.last_load_s = max(seconds, 0.0)
        self.last_load_at = time.time()

    def timed(self, read: Callable[[], T]) -> T:
        """``read()`` (a load), counted and timed when it succeeds."""
        started = time.perf_counter()
        result = read()
        self.loaded(time.perf_counter() - started)
        return result


def residency(stats: AdapterStats, tier: str, pinned: bool, identity: str, nbytes: int) -> dict[str, Any]:
    """One adapter's residency as the API shows it (``residency`` in describe responses)."""
    return {
        "tier": tier,
        "pinned": pinned,
        "identity": identity,
        "memory_bytes": nbytes,
        "loads": stats.loads,
        "last_load_s": stats.last_load_s,
        "last_load_at": stats.last_load_at,
        "slot_loads": stats.slot_loads,
        "slot_evictions": stats.slot_evictions,
        "memory_evictions": stats.memory_evictions,
    }
