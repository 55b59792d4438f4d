"""Adapter memory tiers, as vLLM/LMI have them: ``max_loras`` resident compute slots,
``max_cpu_loras`` adapters held in memory (and, where set, at most ``cpu_bytes`` of them: an
adapter with its own LM head costs as much as hundreds of plain ones), the rest on disk;
least-recently-used eviction.

Plain bookkeeping (loading is a callback), so its rules are tested on their own. Each
registration of a name gets a new version. Two kinds of reference:

- a *hold*: a request in the engine (waiting or running) on that version. Taken when the
  request is added, so a request finishes on the version it was admitted with even if the
  adapter is updated or unregistered while it waits; a replaced or deleted version lives (its
  weights kept in memory) until its last hold is released.
- a *slot reference*: a running request using the version's resident compute slot. A slot
  with references is never evicted, nor is a pinned one. At most ``slots - 1`` adapters can be
  pinned (as SGLang does), so one slot always stays for everyone else.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loraserve.engine.adapter_stats import AdapterStats, residency
from loraserve.errors import AdapterNotFoundError, BadRequestError
from loraserve.wire.control import ADAPTER_TIERS

log = logging.getLogger("loraserve.engine")
AdapterKey = tuple[str, str]  # (name, identity of the registration)
_local = itertools.count(1)  # identities for adapters registered with none (tests, mixtures)
RESIDENT, IN_MEMORY, ON_DISK = ADAPTER_TIERS


@dataclass(slots=True)
class AdapterEntry:
    name: str
    path: str
    identity: str
    pinned: bool = False
    invocation: tuple[int, ...] | None = None  # activated LoRA's invocation tokens
    nbytes: int = 0  # its weights in memory (what it costs the in-memory tier)
    stats: AdapterStats = field(default_factory=AdapterStats)  # this version's loads, evictions

    @property
    def key(self) -> AdapterKey:
        return (self.name, self.identity)


class AdapterCache:
    def __init__(
        self,
        slots: int,
        cpu_capacity: int,
        load: Callable[[AdapterEntry], Any],
        install: Callable[[int, Any], None],
        clear: Callable[[int], None],
        cpu_bytes: int | None = None,
    ) -> None:
        self.slots = slots
        self.cpu_capacity = cpu_capacity
        self.cpu_bytes = cpu_bytes  # None: counted, not weighed
        self._load, self._install, self._clear = load, install, clear
        self.registered: dict[str, AdapterEntry] = {}
        self.cpu: OrderedDict[AdapterKey, Any] = OrderedDict()  # LRU: oldest first
        self.resident: OrderedDict[AdapterKey, int] = OrderedDict()  # key → slot, LRU order
        self.refs: dict[AdapterKey, int] = {}  # slot references: running requests
        self.holds: dict[AdapterKey, int] = {}  # requests in the engine, waiting or running
        self.stale: dict[AdapterKey, AdapterEntry] = {}  # replaced/deleted, still held
        self.loads = 0
        self.evictions = 0

    def register(
        self,
        name: str,
        path: str,
        weights: Any,
        pinned: bool,
        preload: bool,
        identity: str | None = None,
        load_seconds: float | None = None,
    ) -> AdapterEntry:
        """Add (or replace) ``name``; ``weights`` were already validated by the caller.
        ``identity`` is the registry's (never reused); without one, a local one is minted.
        ``load_seconds``: how long the caller took to read ``weights`` (counted as a load)."""
        if pinned and sum(e.pinned for e in self.registered.values() if e.name != name) >= self.slots - 1:
            raise BadRequestError(
                f"cannot pin {name}: at most option.max_loras - 1 = {self.slots - 1} "
                "adapters can be pinned, so one slot stays free for the others "
                "(raise option.max_loras or unpin one)"
            )
        size = _nbytes(weights)
        if self.cpu_bytes is not None and size > self.cpu_bytes:
            raise BadRequestError(
                f"adapter {name} needs {size / 2**20:.1f} MiB in memory, more than "
                f"option.max_cpu_lora_memory ({self.cpu_bytes / 2**20:.1f} MiB) allows"
            )
        identity = identity or f"local-{next(_local)}"
        current = self.registered.get(name)
        if (name, identity) in self.stale or (current is not None and current.identity == identity):
            raise BadRequestError(f"adapter {name}: registration {identity} was already used")
        self.unregister(name, missing_ok=True)
        entry = AdapterEntry(name, path, identity, pinned, getattr(weights, "invocation", None), size)
        self.registered[name] = entry
        if load_seconds is not None:
            entry.stats.loaded(load_seconds)
        if preload or pinned:
            self.remember(entry.key, weights)
        if pinned and self.acquire(name) is not None:
            self.release(entry.key)  # resident now; the pin keeps it there
        return entry

    def unregister(self, name: str, missing_ok: bool = False) -> None:
        entry = self.registered.pop(name, None)
        if entry is None:
            if missing_ok:
                return
            raise AdapterNotFoundError(f"adapter {name} is not registered in the engine")
        if self.holds.get(entry.key) or self.refs.get(entry.key):
            self.stale[entry.key] = entry  # freed when its last request releases it
            self._keep_in_memory(entry.key)
        else:
            self._drop(entry.key)

    def _keep_in_memory(self, key: AdapterKey) -> None:
        """A held version must outlive its registration (its source may be deleted next)."""
        try:
            self.weights(key)
        except Exception as exc:  # its waiting requests fail at admission, one by one
            log.warning("adapter %s@%s: cannot keep its weights for queued requests: %s", *key, exc)

    def entry(self, name: str) -> AdapterEntry:
        entry = self.registered.get(name)
        if entry is None:
            raise AdapterNotFoundError(f"adapter {name} is not registered")
        return entry

    def remember(self, key: AdapterKey, weights: Any) -> None:
        self.cpu[key] = weights
        self.cpu.move_to_end(key)
        while len(self.cpu) > self.cpu_capacity or (
            self.cpu_bytes is not None and self.memory_in_use() > self.cpu_bytes
        ):
            victim = next((k for k in self.cpu if k != key and not self._held_in_memory(k)), None)
            if victim is None:
                break
            del self.cpu[victim]
            self._stats(victim).memory_evictions += 1

    def memory_in_use(self) -> int:
        """Bytes of the adapter weights held in memory."""
        return sum(_nbytes(weights) for weights in self.cpu.values())

    def _held(self, key: AdapterKey) -> bool:
        """Not evictable from its slot: pinned or in use by a running request."""
        entry = self.registered.get(key[0])
        pinned = entry is not None and entry.key == key and entry.pinned
        return pinned or bool(self.refs.get(key))

    def _held_in_memory(self, key: AdapterKey) -> bool:
        """Not evictable from memory: also a version a request holds (a stale one has no source
        to reread; a waiting one's weights were just read for it)."""
        return self._held(key) or key in self.stale or bool(self.holds.get(key))

    def acquire_key(self, key: AdapterKey) -> int | None:
        """A resident slot for ``key`` with one more reference; None if every slot is held."""
        slot = self.resident.get(key)
        if slot is None:
            slot = self._free_slot()
            if slot is None:
                return None
            self._install(slot, self.weights(key))
            self.loads += 1
            self._stats(key).slot_loads += 1
            self.resident[key] = slot
        self.resident.move_to_end(key)
        self.cpu.move_to_end(key) if key in self.cpu else None
        self.refs[key] = self.refs.get(key, 0) + 1
        return slot

    def weights(self, key: AdapterKey) -> Any:
        """An adapter version's weights: from memory, else read from disk and remembered."""
        weights = self.cpu.get(key)
        if weights is None:
            entry = self.entry_of(key)
            if entry is None:
                raise AdapterNotFoundError(f"adapter {key[0]} ({key[1]}) is no longer registered")
            self.remember(key, weights := self.read(entry))
        return weights

    def read(self, entry: AdapterEntry) -> Any:
        """An adapter version's weights read from disk, timed (thread-safe: no state touched)."""
        return entry.stats.timed(lambda: self._load(entry))

    def acquire(self, name: str) -> int | None:
        return self.acquire_key(self.entry(name).key)

    def release(self, key: AdapterKey) -> None:
        """Give back one slot reference."""
        self._decrement(self.refs, key)

    def hold(self, name: str) -> AdapterKey:
        """The current version of ``name``, held until ``unhold``: a new request's adapter."""
        key = self.entry(name).key
        self.holds[key] = self.holds.get(key, 0) + 1
        return key

    def unhold(self, key: AdapterKey) -> None:
        self._decrement(self.holds, key)

    def _decrement(self, counts: dict[AdapterKey, int], key: AdapterKey) -> None:
        counts[key] -= 1
        if counts[key] == 0:
            del counts[key]
            if key in self.stale and not self.refs.get(key) and not self.holds.get(key):
                del self.stale[key]
                self._drop(key)

    def entry_of(self, key: AdapterKey) -> AdapterEntry | None:
        """The entry of an adapter version: registered now, or replaced but still held."""
        entry = self.registered.get(key[0])
        return entry if entry is not None and entry.key == key else self.stale.get(key)

    def invocation(self, key: AdapterKey) -> tuple[int, ...] | None:
        """The invocation tokens of a held version, if it is activated LoRA."""
        entry = self.entry_of(key)
        return None if entry is None else entry.invocation

    def in_use(self, key: AdapterKey) -> bool:
        """Held by a request (waiting or running) or referenced by a running one."""
        return bool(self.holds.get(key) or self.refs.get(key))

    def pinned_key(self, key: AdapterKey) -> bool:
        entry = self.registered.get(key[0])
        return entry is not None and entry.key == key and entry.pinned

    def _free_slot(self) -> int | None:
        used = set(self.resident.values())
        free = [s for s in range(self.slots) if s not in used]
        if free:
            return free[0]  # lowest first keeps the slots in use a short prefix
        victim = next((k for k in self.resident if not self._held(k)), None)
        if victim is None:
            return None
        self.evictions += 1
        self._stats(victim).slot_evictions += 1
        slot = self.resident.pop(victim)
        self._clear(slot)
        return slot

    def _drop(self, key: AdapterKey) -> None:
        slot = self.resident.pop(key, None)
        if slot is not None:
            self._clear(slot)
        self.cpu.pop(key, None)

    def _stats(self, key: AdapterKey) -> AdapterStats:
        """Where a version's events are counted (a throwaway for one no longer known)."""
        entry = self.entry_of(key)
        return AdapterStats() if entry is None else entry.stats

    def _tier(self, key: AdapterKey) -> str:
        """resident (in a compute slot), in_memory, or registered (on disk only)."""
        return RESIDENT if key in self.resident else IN_MEMORY if key in self.cpu else ON_DISK

    def tiers(self) -> dict[str, str]:
        """Each registered adapter's tier."""
        return {name: self._tier(entry.key) for name, entry in self.registered.items()}

    def residency(self) -> dict[str, dict[str, Any]]:
        """Each registered adapter's current version: tier, pin, identity, bytes, loads and
        evictions (routers and autoscalers read these; replaced versions are not shown)."""
        return {
            name: residency(e.stats, self._tier(e.key), e.pinned, e.identity, e.nbytes)
            for name, e in self.registered.items()
        }

    def sizes(self) -> dict[str, int]:
        """Each registered adapter's weights in memory, in bytes (whichever tier it is in)."""
        return {name: entry.nbytes for name, entry in self.registered.items()}

    def stats(self) -> dict[str, int]:
        return {
            "registered": len(self.registered),
            "in_memory": len(self.cpu),
            "in_memory_bytes": self.memory_in_use(),
            "resident": len(self.resident),
            "loads": self.loads,
            "evictions": self.evictions,
            "pinned": sum(e.pinned for e in self.registered.values()),
            "stale": len(self.stale),
            "slot_refs": sum(self.refs.values()),
            "holds": sum(self.holds.values()),
        }


def _nbytes(weights: Any) -> int:
    """An adapter's weights in bytes (its ``nbytes()``; 0 for what has none, as in unit tests)."""
    size = getattr(weights, "nbytes", None)
    return int(size()) if callable(size) else 0
