"""Adapter weights read from disk off the engine thread: a request whose adapter is only on
disk waits while a loader thread reads it, and the batch keeps stepping; without this the step
that admits it would stall every running request for the whole read (S-LoRA's and vLLM's
asynchronous adapter loading are the pattern).

A read starts as soon as a request for the adapter is added (prefetch: its file is read while
requests ahead of it decode) and at the latest when the scheduler reaches it. Once read, the
weights join the in-memory tier under the engine lock and the engine is woken; a version with a
request waiting on it is not evicted from memory (``AdapterCache._held_in_memory``), so a read
is never wasted. A failed read is remembered for that version, and each of its waiting requests
fails with the reason, no other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from loraserve.engine.adapter_cache import AdapterCache, AdapterEntry, AdapterKey
from loraserve.engine.mixtures import PREFIX

log = logging.getLogger("loraserve.engine")


class AdapterPrefetcher:
    def __init__(
        self, cache: AdapterCache, lock: threading.Condition, woken: Callable[[], None], threads: int = 1
    ) -> None:
        self.cache, self.lock, self.woken = cache, lock, woken
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="adapter-read")
        self.reading: set[AdapterKey] = set()
        self.failed: dict[AdapterKey, str] = {}
        self.reads = 0

    def ready(self, key: AdapterKey) -> bool:
        """Whether ``key``'s weights are in memory or a compute slot (or computed in memory: a
        mixture); if not, its read is started. Call under the engine lock."""
        if self._loaded(key):
            return True
        self.want(key)
        return False

    def _loaded(self, key: AdapterKey) -> bool:
        return key in self.cache.cpu or key in self.cache.resident or key[0].startswith(PREFIX)

    def want(self, key: AdapterKey) -> None:
        """Start reading ``key`` unless it is loaded, being read, or failed. Under the lock."""
        if self._loaded(key) or key in self.reading or key in self.failed:
            return
        entry = self.cache.entry_of(key)
        if entry is None:
            return
        self.reading.add(key)
        self.pool.submit(self._read, key, entry)

    def failure(self, key: AdapterKey) -> str | None:
        return self.failed.get(key)

    def forget(self, key: AdapterKey) -> None:
        """A version nobody holds any more: its failure need not be remembered."""
        self.failed.pop(key, None)

    def _read(self, key: AdapterKey, entry: AdapterEntry) -> None:
        weights, error = None, None
        try:
            weights = self.cache.read(entry)
        except Exception as exc:  # reported to each request waiting on this version
            error = str(exc) or type(exc).__name__
            log.warning("adapter %s@%s cannot be loaded: %s", *key, error)
        with self.lock:
            self.reading.discard(key)
            self.reads += 1
            if error is not None:
                self.failed[key] = error
            elif self.cache.entry_of(key) is not None:  # still registered, or held while replaced
                self.cache.remember(key, weights)
            self.woken()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
