"""Prometheus metrics and the one-line-per-request log: requests, errors, latency and
time-to-first-token histograms, generated tokens (by model and adapter), queue depth, and the
engine's own figures (running batch, KV-cache use, adapter tiers, loads, evictions); each
adapter's residency and load latency are ``adapter_metrics``'."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from loraserve.errors import LoraserveError
from loraserve.serving.adapter_metrics import AdapterMetrics
from loraserve.serving.engine_metrics import EngineCollector
from loraserve.serving.model_service import ModelService
from loraserve.serving.recent import LabelFigures, RateWindow
from loraserve.serving.request_fields import note
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.control import EngineStatsQuery
from loraserve.wire.frames import ReplyKind

log = logging.getLogger("loraserve.requests")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKENS_HEADER = "x-loraserve-generated-tokens"
SHARED_LABELS = frozenset({"", "mixed", "unregistered", "other"})  # not adapter names


def adapter_label(model: ModelService, adapters: list[str]) -> str:
    """Bounded label values: "" (base), a registered adapter's name, "mixed" or "unregistered"."""
    names = {a for a in adapters if a}
    if not names:
        return ""
    if len(names) > 1:
        return "mixed"
    name = names.pop()
    return name if name in model.registry else "unregistered"


def _figures(reply: WorkerReply) -> tuple[int, int]:
    """(status, generated tokens) of a reply, read as its kind says."""
    output = reply.output
    if reply.kind is ReplyKind.DJL:
        return output["code"], int(output["properties"].get(TOKENS_HEADER, 0))
    if output is None:
        return (200, 0) if reply.stream is not None else (500, 0)
    return 200, output.generated_tokens if reply.kind is ReplyKind.GENERATE else 0


class ServerMetrics:
    """Request metrics by (model, adapter). Label values stay bounded: at most
    ``max_adapter_labels`` adapter names (later ones are counted as "other"), and the series
    of an adapter or model that is gone are removed at the next scrape (``prune``)."""

    def __init__(self, max_adapter_labels: int = 100) -> None:
        self.max_adapter_labels = max_adapter_labels
        self._series: dict[tuple[str, str], set[str]] = {}  # (model, adapter) → status codes seen
        # for the console: all-time tokens (pruning keeps them) counted as they are generated —
        # a stream's per chunk, a whole answer's when it returns — their rate, and per label
        self.generated_tokens = 0
        self.rate = RateWindow()
        self.recent: dict[tuple[str, str], LabelFigures] = {}
        self.registry = CollectorRegistry()
        labels = ["model", "adapter"]
        self.requests = Counter(
            "loraserve_requests", "Inference requests", [*labels, "code"], registry=self.registry
        )
        self.errors = Counter(
            "loraserve_request_errors", "Failed inference requests", labels, registry=self.registry
        )
        self.latency = Histogram(
            "loraserve_request_latency_seconds",
            "Request latency",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "loraserve_time_to_first_token_seconds",
            "Time to the first streamed chunk",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "loraserve_generated_tokens", "Tokens generated", labels, registry=self.registry
        )
        self.engine = EngineCollector()
        self._streams: set[asyncio.Task] = set()
        self.registry.register(self.engine)
        self.adapters = AdapterMetrics(self.registry)

    async def observe(self, model: str, adapter: str, call: Awaitable[WorkerReply]) -> WorkerReply:
        """An inference call (``ServedModel.infer``), counted, timed and logged."""
        adapter = self._claim(model, adapter)
        started = time.perf_counter()
        try:
            reply = await call
        except LoraserveError as exc:
            self._done(model, adapter, exc.status_code, started, 0)
            raise
        code, tokens = _figures(reply)
        if reply.stream is None:
            self._count(model, adapter, tokens)
            self._done(model, adapter, code, started, tokens)
            return reply
        forwarded: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self._forward(reply.stream, forwarded, model, adapter, started, code))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
        return WorkerReply(reply.kind, reply.output, forwarded, reply.cancel)

    def refused(self, model: str, code: int) -> None:
        """A request refused before it reached a worker (bad parameters, unknown adapter)."""
        self._done(model, "", code, time.perf_counter(), 0)

    async def _forward(
        self,
        source: asyncio.Queue,
        target: asyncio.Queue,
        model: str,
        adapter: str,
        started: float,
        code: int,
    ) -> None:
        chunks = 0
        while True:
            item = await source.get()
            target.put_nowait(item)
            if item is None or isinstance(item, Exception):
                break
            if chunks == 0:
                ttft = time.perf_counter() - started
                self.ttft.labels(model, adapter).observe(ttft)
                self._figures(model, adapter).ttfts.append(ttft)
            count = (item.count(b"\n") or 1) if isinstance(item, bytes) else 1  # lines or tokens
            self._count(model, adapter, count)
            chunks += count
        self._done(model, adapter, 500 if isinstance(item, Exception) else code, started, chunks)

    def _label(self, model: str, adapter: str) -> str:
        """``adapter`` itself while fewer than ``max_adapter_labels`` names have series."""
        if adapter in SHARED_LABELS or (model, adapter) in self._series:
            return adapter
        named = sum(1 for _, name in self._series if name not in SHARED_LABELS)
        return adapter if named < self.max_adapter_labels else "other"

    def _claim(self, model: str, adapter: str) -> str:
        """``adapter``'s label, counted against the cap from now (requests and residency)."""
        label = self._label(model, adapter)
        self._series.setdefault((model, label), set())
        return label

    def adapter_loaded(self, model: str, src: str, seconds: float) -> None:
        """A registration or update took ``seconds`` (``served_model.timed_adapter_load``)."""
        self.adapters.loaded(model, src, seconds)

    def prune(self, models: list[ModelService]) -> None:
        """Remove the series of models and adapters that are no longer registered."""
        served = {m.name: m for m in models}
        self.engine.stats = {k: v for k, v in self.engine.stats.items() if k in served}
        self.adapters.prune(set(served))
        for model, adapter in list(self._series):
            owner = served.get(model)
            if owner is not None and (adapter in SHARED_LABELS or adapter in owner.registry):
                continue
            self.recent.pop((model, adapter), None)
            for code in self._series.pop((model, adapter)):
                with contextlib.suppress(KeyError):
                    self.requests.remove(model, adapter, code)
            for family in (self.errors, self.latency, self.ttft, self.tokens):
                with contextlib.suppress(KeyError):
                    family.remove(model, adapter)

    def _figures(self, model: str, adapter: str) -> LabelFigures:
        return self.recent.setdefault((model, adapter), LabelFigures())

    def figures(self, model: str) -> dict[str, dict[str, Any]]:
        """Each label of ``model`` with traffic → its totals, recent token rate and TTFTs."""
        now = time.monotonic()
        return {adapter: f.summary(now) for (name, adapter), f in self.recent.items() if name == model}

    def _count(self, model: str, adapter: str, tokens: int) -> None:
        """Generated tokens, counted when they reach the server (the console's live throughput)."""
        if not tokens:
            return
        now = time.monotonic()
        self.generated_tokens += tokens
        self.rate.add(tokens, now)
        self._figures(model, adapter).add_tokens(tokens, now)
        self.tokens.labels(model, adapter).inc(tokens)

    def _done(self, model: str, adapter: str, code: int, started: float, tokens: int) -> None:
        """The request's end: its status and latency (its tokens were counted by ``_count``)."""
        elapsed = time.perf_counter() - started
        self._series.setdefault((model, adapter), set()).add(str(code))
        figures = self._figures(model, adapter)
        figures.requests += 1
        self.requests.labels(model, adapter, str(code)).inc()
        self.latency.labels(model, adapter).observe(elapsed)
        if code >= 400:
            figures.errors += 1
            self.errors.labels(model, adapter).inc()
        # on the HTTP request's one log line (api.request_log); a call outside one logs its own
        if not note(model=model, adapter=adapter or "-", tokens=tokens):
            log.info(
                "model=%s adapter=%s status=%s tokens=%s latency_ms=%.1f",
                model,
                adapter or "-",
                code,
                tokens,
                elapsed * 1000,
            )

    async def refresh(self, models: list[ModelService]) -> None:
        """Ask each built-in-engine worker for its statistics (called at scrape time)."""
        self.prune(models)
        self.engine.queues = {m.name: m.workers.queue_length for m in models}
        for model in models:
            await self.fetch_engine_stats(model)
        self.adapters.label(self.engine.stats, self._claim)

    async def fetch_engine_stats(self, model: ModelService) -> dict[str, Any]:
        """One built-in-engine model's statistics, asked of its worker now (empty if it cannot say)."""
        if not model.uses_builtin_engine or not model.workers.live_workers:
            return {}
        try:
            replies = await asyncio.wait_for(model.workers.broadcast("control", EngineStatsQuery()), 5)
        except (LoraserveError, asyncio.TimeoutError):
            return {}
        stats = [r.output for r in replies if r.kind is ReplyKind.CONTROL]
        if stats:
            self.engine.stats[model.name] = stats[0].figures
        return self.engine.stats.get(model.name, {})
