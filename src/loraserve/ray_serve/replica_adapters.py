"""Which adapters one replica's engine holds, at which revision, and when it may drop them.

Ray's per-replica LRU (``@serve.multiplexed``) decides which adapters a replica keeps; this
keeps the engine in step with it and with the shared registry: load on first use, reload a
newer revision, drop an unregistered one, hold pinned ones whatever the LRU says. An adapter
that leaves (evicted or unregistered) while requests still use it is dropped when the last
of them ends, so a request never loses its adapter between admission and scheduling.
Plain Python over a two-method engine interface, so its rules are tested without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

from loraserve.ray_serve.adapter_store import AdapterRef

log = logging.getLogger("loraserve.ray.adapters")


class AdapterEngine(Protocol):
    def register_adapter(
        self,
        name: str,
        path: str | Path,
        pin: bool = False,
        preload: bool = True,
        identity: str | None = None,
    ) -> Any: ...

    def unregister_adapter(self, name: str) -> None: ...


class LoadedAdapter:
    """One adapter in Ray's multiplex LRU; Ray calls ``__del__`` when it evicts it."""

    def __init__(self, owner: ReplicaAdapters, name: str) -> None:
        self.owner, self.name = owner, name
        self.evicted = False

    def __del__(self) -> None:  # called by Ray on eviction, and later by the GC: idempotent
        if not self.evicted:
            self.evicted = True
            self.owner.evict(self)


class ReplicaAdapters:
    def __init__(self, engine: AdapterEngine) -> None:
        self.engine = engine
        self.revisions: dict[str, int] = {}  # name → revision the engine holds now
        self.pinned: set[str] = set()
        self.lru: dict[str, LoadedAdapter] = {}  # the live handle Ray holds, by name
        self.in_flight: Counter[str] = Counter()
        self.leaving: set[str] = set()  # drop once no request uses it
        self.served: Counter[str] = Counter()  # requests by adapter ("" = base) on this replica
        self._state = threading.Lock()  # eviction runs on Ray's executor threads
        self._loading = asyncio.Lock()

    def handle_for(self, name: str) -> LoadedAdapter:
        """Ray's loader: a new LRU entry for ``name`` (its weights load on ``ensure``)."""
        handle = LoadedAdapter(self, name)
        with self._state:
            self.lru[name] = handle
            self.leaving.discard(name)
        return handle

    async def ensure(self, ref: AdapterRef) -> None:
        """Make the engine hold ``ref``'s revision: load it, or reload a newer one."""
        if self.revisions.get(ref.name) == ref.revision and (ref.name in self.pinned) == ref.pin:
            return
        async with self._loading:
            if self.revisions.get(ref.name) == ref.revision and (ref.name in self.pinned) == ref.pin:
                return
            # the store's revision is this registration's identity (a pin change alone: a new local one)
            identity = f"revision-{ref.revision}" if self.revisions.get(ref.name) != ref.revision else None
            await asyncio.to_thread(self.engine.register_adapter, ref.name, ref.path, ref.pin, True, identity)
            with self._state:
                self.revisions[ref.name] = ref.revision
                self.pinned.discard(ref.name)
                if ref.pin:
                    self.pinned.add(ref.name)
                self.leaving.discard(ref.name)
            log.info("adapter %s revision %d loaded%s", ref.name, ref.revision, " (pinned)" * ref.pin)

    def acquire(self, names: list[str]) -> None:
        with self._state:
            self.in_flight.update(names)

    def count_request(self, names: list[str]) -> None:
        with self._state:
            self.served.update(names or [""])

    def release(self, names: list[str]) -> None:
        with self._state:
            self.in_flight.subtract(names)
            done = [n for n in names if self.in_flight[n] <= 0 and n in self.leaving]
        for name in done:
            self._drop_now(name)

    def evict(self, handle: LoadedAdapter) -> None:
        """Ray's LRU let ``handle`` go: drop its adapter unless pinned or replaced since."""
        with self._state:
            if self.lru.get(handle.name) is not handle:
                return
            del self.lru[handle.name]
            if handle.name in self.pinned:
                return
        self.drop(handle.name)

    def drop(self, name: str) -> None:
        """Unregister ``name`` from the engine now, or when its last request ends."""
        with self._state:
            if name not in self.revisions:
                return
            if self.in_flight[name] > 0:
                self.leaving.add(name)
                return
        self._drop_now(name)

    def _drop_now(self, name: str) -> None:
        with self._state:
            if self.revisions.pop(name, None) is None:
                return
            self.pinned.discard(name)
            self.leaving.discard(name)
        try:
            self.engine.unregister_adapter(name)
        except Exception as exc:  # already gone from the engine: nothing left to free
            log.debug("unregistering %s: %s", name, exc)
        log.info("adapter %s dropped from this replica", name)

    async def sync(self, refs: dict[str, AdapterRef]) -> None:
        """Follow the shared registry: drop the unregistered, reload newer revisions of the
        adapters in use, load every pinned one (all replicas hold pinned adapters)."""
        for name, revision in list(self.revisions.items()):
            ref = refs.get(name)
            if ref is None:
                self.drop(name)
            elif ref.revision != revision and not ref.pin and name in self.lru:
                await self.ensure(ref)  # in use here: reload the new revision now
            elif ref.revision != revision and not ref.pin:
                self.drop(name)  # was pinned, now is not: Ray's LRU decides again
        for ref in refs.values():
            if ref.pin:
                try:
                    await self.ensure(ref)
                except Exception as exc:  # one bad pin must not stop the others
                    log.error("cannot pin adapter %s on this replica: %s", ref.name, exc)

    def snapshot(self) -> dict[str, Any]:
        with self._state:
            return {
                "held": dict(self.revisions),
                "pinned": sorted(self.pinned),
                "lru": list(self.lru),
                "served": dict(self.served),
                "in_flight": {k: v for k, v in self.in_flight.items() if v > 0},
            }
