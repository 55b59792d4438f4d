"""What ``/console/state`` says of one model: its adapters and their tiers, the KV-cache line,
the engine's own counters the page charts, and per-adapter traffic (the base model is "")."""

from __future__ import annotations

from typing import Any

from loraserve.adapters.registry import AdapterRecord, AdapterState
from loraserve.serving.metrics import SHARED_LABELS, ServerMetrics
from loraserve.serving.model_service import ModelService

# The engine's figures the charts need; the page turns the counters into rates between polls.
CHARTED = (
    "running",
    "waiting",
    "kv_usage",
    "generated_tokens",
    "computed_tokens",
    "prefix_cache_queried_tokens",
    "prefix_cache_hit_tokens",
    "preemptions",
    "steps",
)
NO_TRAFFIC = {
    "requests": 0,
    "errors": 0,
    "generated_tokens": 0,
    "tokens_per_s": 0.0,
    "ttft_p50_s": None,
    "ttft_p95_s": None,
    "ttft_samples": 0,
}


def model_state(model: ModelService, metrics: ServerMetrics) -> dict[str, Any]:
    engine = metrics.engine.stats.get(model.name, {})
    tiers = engine.get("adapter_tiers", {})
    residency = engine.get("adapter_residency", {})
    records = model.registry.records()
    tier_of = {r.name: _tier(r, tiers) for r in records}
    adapters = [
        {
            "name": r.name,
            "src": r.src,
            "pin": r.pin,
            "state": r.state.value,
            "error": r.error,
            "tier": tier_of[r.name],
            "residency": residency.get(r.name),  # None: not on the built-in engine
        }
        for r in records
    ]
    return {
        "name": model.name,
        "status": model.status.value,
        "engine": "built-in" if model.uses_builtin_engine else "python",
        "adapters": adapters,
        "kv": _kv(engine),
        "counters": {key: engine.get(key, 0) for key in CHARTED} if "steps" in engine else None,
        "traffic": traffic_rows(metrics.figures(model.name), tier_of),
    }


def traffic_rows(figures: dict[str, dict[str, Any]], tiers: dict[str, str]) -> list[dict[str, Any]]:
    """One row per label: the base model, every registered adapter (traffic or not), then the
    shared labels ("mixed", "unregistered", "other") that have had some."""
    shared = [label for label in sorted(SHARED_LABELS - {""}) if label in figures]
    rows = [("", "base"), *tiers.items(), *((label, "-") for label in shared)]
    return [{"adapter": name, "tier": tier, **figures.get(name, NO_TRAFFIC)} for name, tier in rows]


def _kv(engine: dict) -> dict | None:
    """The KV-cache line of a built-in engine: blocks in use, prefix-cache hits, preemptions."""
    if "kv_blocks_total" not in engine:
        return None
    return {
        "blocks_used": engine["kv_blocks_total"] - engine["kv_blocks_free"],
        "blocks_total": engine["kv_blocks_total"],
        "prefix_hit_rate": engine["prefix_cache_hit_rate"],
        "preemptions": engine["preemptions"],
    }


def _tier(record: AdapterRecord, tiers: dict[str, str]) -> str:
    """What the page shows: failed (with its reason beside it), pinned, or the engine's tier."""
    if record.state is AdapterState.FAILED:
        return "failed"
    return "pinned" if record.pin else tiers.get(record.name, "registered")
