"""The adapter memory tiers: LRU eviction, pins, references, versions (no tensors)."""

from __future__ import annotations

import pytest

from loraserve.engine.adapter_cache import AdapterCache
from loraserve.errors import AdapterNotFoundError, BadRequestError


class Recorder:
    def __init__(self) -> None:
        self.installed: dict[int, str] = {}
        self.loads: list[str] = []

    def cache(self, slots: int = 2, cpu: int = 3) -> AdapterCache:
        return AdapterCache(slots, cpu, self.load, self.install, self.clear)

    def load(self, entry):
        self.loads.append(entry.name)
        return f"w:{entry.name}:{entry.identity}"

    def install(self, slot: int, weights) -> None:
        self.installed[slot] = weights

    def clear(self, slot: int) -> None:
        self.installed.pop(slot, None)


def test_lru_eviction_of_unused_slots():
    rec = Recorder()
    cache = rec.cache(slots=2)
    for name in "abc":
        cache.register(name, f"/{name}", f"w:{name}", pinned=False, preload=False)
    for name in "ab":
        cache.release(cache.entry(name).key) if cache.acquire(name) is not None else None
    assert set(cache.resident) == {cache.entry("a").key, cache.entry("b").key}
    cache.acquire("a")  # a is now most recent and held
    cache.release(cache.entry("a").key)
    assert cache.acquire("c") is not None  # evicts b, the least recently used
    assert cache.entry("b").key not in cache.resident and cache.evictions == 1
    assert rec.loads == ["a", "b", "c"]  # preload=False: each read from disk once


def test_held_and_pinned_adapters_are_never_evicted():
    rec = Recorder()
    cache = rec.cache(slots=2)
    cache.register("pin", "/p", "w:pin", pinned=True, preload=True)
    cache.register("busy", "/b", "w:busy", pinned=False, preload=True)
    cache.register("late", "/l", "w:late", pinned=False, preload=True)
    assert cache.acquire("busy") is not None  # running request holds it
    assert cache.acquire("late") is None  # both slots held: the request must wait
    cache.release(cache.entry("busy").key)
    assert cache.acquire("late") is not None
    assert cache.entry("pin").key in cache.resident


def test_cpu_tier_is_bounded():
    rec = Recorder()
    cache = rec.cache(slots=1, cpu=2)
    for name in "abcd":
        cache.register(name, f"/{name}", f"w:{name}", pinned=False, preload=True)
    assert len(cache.cpu) == 2


def test_replaced_version_lives_until_its_last_request():
    rec = Recorder()
    cache = rec.cache(slots=2)
    cache.register("a", "/a1", "w:v1", pinned=False, preload=True)
    old = cache.entry("a").key
    slot = cache.acquire("a")
    cache.register("a", "/a2", "w:v2", pinned=False, preload=True)  # update while running
    new = cache.entry("a").key
    assert new != old and rec.installed[slot] == "w:v1"
    new_slot = cache.acquire("a")
    assert new_slot != slot and rec.installed[new_slot] == "w:v2"
    cache.release(old)
    assert old not in cache.resident and old not in cache.cpu and slot not in rec.installed


def test_unregister_frees_memory_and_unknown_names_fail():
    rec = Recorder()
    cache = rec.cache()
    cache.register("a", "/a", "w:a", pinned=False, preload=True)
    cache.release(cache.entry("a").key) if cache.acquire("a") is not None else None
    cache.unregister("a")
    assert not cache.cpu and not cache.resident and not rec.installed
    with pytest.raises(AdapterNotFoundError):
        cache.acquire("a")


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_pins_leave_one_slot_for_everyone_else(slots):
    cache = Recorder().cache(slots=slots, cpu=8)
    for i in range(slots - 1):
        cache.register(f"p{i}", "/p", "w", pinned=True, preload=True)
    with pytest.raises(BadRequestError, match="max_loras - 1"):
        cache.register("one_more", "/p", "w", pinned=True, preload=True)
    cache.register("free", "/f", "w", pinned=False, preload=True)
    assert cache.acquire("free") is not None  # the unpinned slot


def test_held_version_outlives_unregister_in_memory_then_goes():
    rec = Recorder()
    cache = rec.cache(slots=2, cpu=1)
    cache.register("a", "/a", "w:a", pinned=False, preload=False)  # on disk only
    key = cache.hold("a")  # a queued request
    cache.unregister("a")
    assert key in cache.stale and cache.cpu[key] == f"w:a:{key[1]}"  # read while it still could be
    cache.register("b", "/b", "w:b", pinned=False, preload=True)  # memory tier full: a stays
    assert key in cache.cpu
    slot = cache.acquire_key(key)
    assert slot is not None and cache.stats()["slot_refs"] == 1 and cache.stats()["holds"] == 1
    cache.release(key)
    assert key in cache.stale  # still held by its request
    cache.unhold(key)
    assert key not in cache.stale and key not in cache.cpu and key not in cache.resident


def test_update_while_queued_keeps_both_versions_apart():
    rec = Recorder()
    cache = rec.cache()
    cache.register("a", "/a1", "w:v1", pinned=False, preload=True)
    old = cache.hold("a")
    cache.register("a", "/a2", "w:v2", pinned=False, preload=True)
    new = cache.hold("a")
    assert old != new and cache.weights(old) == "w:v1" and cache.weights(new) == "w:v2"
    cache.unhold(old)
    cache.unhold(new)
    assert not cache.stale and not cache.holds and cache.entry("a").key == new


def test_unknown_version_is_a_clear_error_not_an_assert():
    cache = Recorder().cache()
    with pytest.raises(AdapterNotFoundError, match="no longer registered"):
        cache.weights(("ghost", "999"))


class Sized(str):
    """Weights that know their size, as LoraWeights do."""

    size = 0

    def nbytes(self) -> int:
        return self.size


def _sized(name: str, size: int) -> Sized:
    weights = Sized(name)
    weights.size = size
    return weights


def test_the_memory_tier_is_weighed_as_well_as_counted():
    """A byte budget evicts the least recently used adapters until the new one fits; one larger
    than the whole budget is refused at registration, naming the option."""
    rec = Recorder()
    cache = AdapterCache(2, 10, rec.load, rec.install, rec.clear, cpu_bytes=100)
    cache.register("a", "/a", _sized("a", 40), pinned=False, preload=True)
    cache.register("b", "/b", _sized("b", 40), pinned=False, preload=True)
    assert cache.memory_in_use() == 80
    cache.register("head", "/head", _sized("head", 60), pinned=False, preload=True)  # a's bytes go
    assert [key[0] for key in cache.cpu] == ["b", "head"] and cache.memory_in_use() == 100
    assert cache.sizes() == {"a": 40, "b": 40, "head": 60}
    assert cache.stats()["in_memory_bytes"] == 100
    with pytest.raises(BadRequestError, match="max_cpu_lora_memory"):
        cache.register("huge", "/huge", _sized("huge", 101), pinned=False, preload=True)
    assert "huge" not in cache.registered and cache.memory_in_use() == 100


def test_a_held_adapter_stays_in_memory_over_the_byte_budget():
    rec = Recorder()
    cache = AdapterCache(2, 10, rec.load, rec.install, rec.clear, cpu_bytes=100)
    cache.register("a", "/a", _sized("a", 70), pinned=False, preload=True)
    assert cache.acquire("a") is not None  # a running request uses it
    cache.register("b", "/b", _sized("b", 70), pinned=False, preload=True)
    assert {key[0] for key in cache.cpu} == {"a", "b"}  # over budget rather than pull a's weights


def test_the_registry_identity_keys_an_adapter_and_is_never_reused():
    """A name deleted and registered again while its old registration is still held by a
    request gets a new identity from the registry; re-sending one already used is refused
    before anything changes (it would alias the old version's weights and cache blocks)."""
    cache = Recorder().cache()
    cache.register("a", "/a1", "w:1", pinned=False, preload=True, identity="id-1")
    held = cache.hold("a")
    assert held == ("a", "id-1")
    cache.unregister("a")
    cache.register("a", "/a2", "w:2", pinned=False, preload=True, identity="id-2")
    assert cache.hold("a") == ("a", "id-2") and cache.weights(held) == "w:1"
    with pytest.raises(BadRequestError, match="already used"):
        cache.register("a", "/a3", "w:3", pinned=False, preload=True, identity="id-1")
    with pytest.raises(BadRequestError, match="already used"):
        cache.register("a", "/a3", "w:3", pinned=False, preload=True, identity="id-2")
    assert cache.entry("a").identity == "id-2"  # the refused registrations changed nothing
