"""Per-adapter residency figures: tiers, loads, load times and evictions follow each adapter
version through loads, evictions, pins, updates and unregistration (no tensors)."""

from __future__ import annotations

import pytest

from loraserve.engine.adapter_cache import AdapterCache
from tests.unit.test_adapter_cache import Recorder


def use(cache: AdapterCache, name: str) -> None:
    """One request on ``name``: its slot acquired, then released."""
    assert cache.acquire(name) is not None
    cache.release(cache.entry(name).key)


def test_loads_and_slot_evictions_are_counted_per_adapter():
    cache = Recorder().cache(slots=1, cpu=3)
    for name in "ab":
        cache.register(name, f"/{name}", f"w:{name}", pinned=False, preload=False, load_seconds=0.25)
    a = cache.residency()["a"]
    assert a["tier"] == "registered" and a["loads"] == 1 and a["last_load_s"] == 0.25
    assert a["last_load_at"] is not None and a["slot_loads"] == 0 and not a["pinned"]
    use(cache, "a")  # read from disk by the load callback, then into the slot
    a = cache.residency()["a"]
    assert a["tier"] == "resident" and a["loads"] == 2 and a["slot_loads"] == 1
    assert a["last_load_s"] is not None and a["last_load_s"] >= 0
    use(cache, "b")  # the only slot: a is evicted from it, stays in memory
    a, b = cache.residency()["a"], cache.residency()["b"]
    assert a["tier"] == "in_memory" and a["slot_evictions"] == 1 and a["memory_evictions"] == 0
    assert b["tier"] == "resident" and b["slot_loads"] == 1 and b["slot_evictions"] == 0
    use(cache, "a")  # back in the slot from memory: no new read
    assert cache.residency()["a"]["loads"] == 2 and cache.residency()["a"]["slot_loads"] == 2
    assert cache.residency()["b"]["slot_evictions"] == 1


def test_memory_evictions_and_bytes():
    cache = Recorder().cache(slots=2, cpu=1)
    cache.register("a", "/a", "w:a", pinned=False, preload=True)
    assert cache.residency()["a"]["tier"] == "in_memory" and cache.residency()["a"]["loads"] == 0
    cache.register("b", "/b", "w:b", pinned=False, preload=True)  # the memory tier holds one
    a = cache.residency()["a"]
    assert a["tier"] == "registered" and a["memory_evictions"] == 1 and a["slot_evictions"] == 0
    assert a["memory_bytes"] == 0 and a["identity"] == cache.entry("a").identity


def test_a_pinned_adapter_stays_resident_and_is_never_evicted():
    cache = Recorder().cache(slots=2, cpu=2)
    cache.register("pin", "/p", "w:pin", pinned=True, preload=True)
    for name in "abc":
        cache.register(name, f"/{name}", f"w:{name}", pinned=False, preload=False)
        use(cache, name)
    pin = cache.residency()["pin"]
    assert pin["pinned"] and pin["tier"] == "resident" and pin["slot_loads"] == 1
    assert pin["slot_evictions"] == 0 and pin["memory_evictions"] == 0
    assert cache.residency()["a"]["slot_evictions"] == 1 and cache.residency()["a"]["memory_evictions"] == 1


def test_an_update_starts_a_new_version_from_zero():
    """The old version, still held by a request, is evicted after the update: that counts for
    it, not for the new version, which shows only its own loads."""
    cache = Recorder().cache(slots=1, cpu=1)
    cache.register("a", "/a1", "w:v1", pinned=False, preload=False, identity="id-1", load_seconds=0.5)
    use(cache, "a")
    old = cache.hold("a")  # a queued request on version 1
    cache.register("a", "/a2", "w:v2", pinned=False, preload=True, identity="id-2", load_seconds=0.1)
    new = cache.residency()["a"]
    assert new["identity"] == "id-2" and new["loads"] == 1 and new["last_load_s"] == 0.1
    assert new["slot_loads"] == 0 and new["slot_evictions"] == 0 and new["tier"] == "in_memory"
    use(cache, "a")  # version 2 takes the slot from the held version 1
    new = cache.residency()["a"]
    assert new["tier"] == "resident" and new["slot_loads"] == 1 and new["slot_evictions"] == 0
    assert cache.stale[old].stats.slot_evictions == 1  # counted on the old version
    cache.unhold(old)
    assert not cache.stale and set(cache.residency()) == {"a"}


def test_unregister_removes_the_figures_and_a_new_registration_starts_at_zero():
    cache = Recorder().cache(slots=1, cpu=1)
    cache.register("a", "/a", "w:a", pinned=False, preload=False, load_seconds=0.2)
    cache.register("b", "/b", "w:b", pinned=False, preload=False)
    for name in "aba":
        use(cache, name)
    assert cache.residency()["a"]["slot_evictions"] == 1
    cache.unregister("a")
    assert set(cache.residency()) == {"b"}
    cache.register("a", "/a", "w:a", pinned=False, preload=False)
    fresh = cache.residency()["a"]
    assert fresh["tier"] == "registered" and fresh["last_load_s"] is None
    counts = ("loads", "slot_loads", "slot_evictions", "memory_evictions")
    assert all(fresh[k] == 0 for k in counts)


def test_a_failed_load_is_not_counted():
    rec = Recorder()

    def broken(entry):
        raise OSError(f"{entry.path}: gone")

    cache = AdapterCache(1, 1, broken, rec.install, rec.clear)
    cache.register("a", "/a", "w:a", pinned=False, preload=False)
    with pytest.raises(OSError):
        cache.acquire("a")
    a = cache.residency()["a"]
    assert a["loads"] == 0 and a["last_load_s"] is None and a["tier"] == "registered"
