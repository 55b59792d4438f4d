"""Virtual token counters: who is served next, lifting, forgetting (pure, no engine)."""

from __future__ import annotations

import pytest

from loraserve.engine.fairness import VirtualTokenCounter


def _vtc(counters: dict, backlogged: set) -> VirtualTokenCounter:
    vtc = VirtualTokenCounter(prompt_weight=1.0, output_weight=2.0)
    vtc.counters.update(counters)
    vtc.backlogged.update(backlogged)
    return vtc


@pytest.mark.parametrize(
    "counters,backlogged,arrives,expected",
    [
        ({}, set(), "a", 0.0),  # first client ever
        ({"a": 50.0}, {"a"}, "b", 50.0),  # newcomer lifted to the smallest backlogged counter
        ({"a": 50.0, "b": 20.0}, {"a", "b"}, "c", 20.0),
        ({"a": 50.0, "c": 80.0}, {"a"}, "c", 80.0),  # never lowered: over-service is remembered
        ({"a": 50.0, "c": 10.0}, {"a", "c"}, "c", 10.0),  # already backlogged: unchanged
        ({None: 5.0}, {None}, "a", 5.0),  # the base model is a client like the others
    ],
)
def test_arrival_lifts_to_the_backlog_floor(counters, backlogged, arrives, expected):
    vtc = _vtc(counters, backlogged)
    vtc.arrive(arrives)
    assert vtc.counters[arrives] == expected and arrives in vtc.backlogged


def test_with_nobody_backlogged_the_last_to_leave_sets_the_floor():
    vtc = VirtualTokenCounter()
    vtc.arrive("a")
    vtc.admitted("a", 30)
    vtc.leave("a")
    vtc.arrive("b")  # idle time earns no credit: b starts where a left off
    assert vtc.counters["b"] == 30.0


@pytest.mark.parametrize(
    "counters,clients,expected",
    [
        ({"a": 3.0, "b": 1.0, "c": 2.0}, ["a", "b", "c"], ["b", "c", "a"]),
        ({"a": 1.0, "b": 1.0}, ["b", "a"], ["b", "a"]),  # ties: the older head request first
        ({"a": 0.0}, ["a", None], ["a", None]),  # unknown counter counts as 0
    ],
)
def test_order_by_counter_then_given_order(counters, clients, expected):
    assert _vtc(counters, set()).order(clients) == expected


@pytest.mark.parametrize("prompt,outputs,expected", [(10, 0, 10.0), (10, 5, 20.0), (0, 3, 6.0)])
def test_counters_weigh_prompt_and_output_tokens(prompt, outputs, expected):
    vtc = VirtualTokenCounter(prompt_weight=1.0, output_weight=2.0)
    vtc.admitted("a", prompt)
    vtc.generated("a", outputs)
    assert vtc.counters["a"] == expected


def test_forget_drops_only_idle_clients_a_return_would_lift_anyway():
    vtc = _vtc({"busy": 5.0, "low": 3.0, "high": 90.0, "queued": 10.0}, {"queued"})
    vtc.forget(keep={"busy", "queued"})
    assert set(vtc.counters) == {"busy", "queued", "high"}  # "high" owes service: kept
