"""The resolver's rules, with the store and the registration faked: one lookup for many
concurrent requests, misses and failures remembered for a while, names it must not look up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loraserve.adapters.registry import AdapterOrigin
from loraserve.adapters.remote import check_allowed
from loraserve.errors import BadRequestError, ForbiddenError
from loraserve.serving import adapter_resolver
from loraserve.serving.adapter_resolver import AdapterResolver


class _Model:
    def __init__(self, roots: list[str]) -> None:
        self.name = "base"
        self.resolver_roots = roots
        self.registry: set[str] = set()


def _resolver(model: _Model, calls: list[str], fail: bool = False) -> AdapterResolver:
    async def register(m: _Model, name: str, src: str, origin: AdapterOrigin) -> None:
        calls.append(src)
        assert origin is AdapterOrigin.RESOLVER
        await asyncio.sleep(0.01)  # a fetch in flight while the others arrive
        if fail:
            raise BadRequestError(f"adapter {name} is damaged")
        m.registry.add(name)

    return AdapterResolver(register)  # type: ignore[arg-type]


def test_concurrent_first_requests_share_one_lookup(tmp_path: Path):
    (tmp_path / "one").mkdir()
    model, calls = _Model([str(tmp_path)]), []
    resolver = _resolver(model, calls)

    async def many() -> None:
        await asyncio.gather(*(resolver.ensure(model, ["one"]) for _ in range(50)))  # type: ignore[arg-type]

    asyncio.run(many())
    assert calls == [f"{tmp_path}/one"] and model.registry == {"one"}


def test_misses_and_failures_are_remembered_then_retried(tmp_path: Path, monkeypatch):
    (tmp_path / "bad").mkdir()
    model, calls = _Model([str(tmp_path)]), []
    resolver = _resolver(model, calls, fail=True)
    for _ in range(3):
        with pytest.raises(BadRequestError, match="damaged"):
            asyncio.run(resolver.ensure(model, ["bad"]))  # type: ignore[arg-type]
        asyncio.run(resolver.ensure(model, ["absent"]))  # type: ignore[arg-type]
    assert len(calls) == 1  # the failure was remembered, not fetched again
    monkeypatch.setattr(adapter_resolver, "NEGATIVE_TTL_S", -1.0)
    resolver._misses.clear()
    with pytest.raises(BadRequestError):
        asyncio.run(resolver.ensure(model, ["bad"]))  # type: ignore[arg-type]
    assert len(calls) == 2


def test_names_that_are_no_adapter_name_and_models_without_roots_are_not_looked_up(tmp_path: Path):
    (tmp_path / "x").mkdir()
    calls: list[str] = []
    no_roots = _Model([])
    asyncio.run(_resolver(no_roots, calls).ensure(no_roots, ["x"]))  # type: ignore[arg-type]
    model = _Model([str(tmp_path)])
    asyncio.run(_resolver(model, calls).ensure(model, ["../x", "", "a/b"]))  # type: ignore[arg-type]
    assert calls == []


def test_remembered_misses_are_bounded(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(adapter_resolver, "MAX_REMEMBERED", 5)
    model, calls = _Model([str(tmp_path)]), []
    resolver = _resolver(model, calls)
    for i in range(20):
        asyncio.run(resolver.ensure(model, [f"n{i}"]))  # type: ignore[arg-type]
    assert len(resolver._misses) == 5


@pytest.mark.parametrize(
    ("url", "prefix", "allowed"),
    [
        ("https://store/a.tar.gz", "https://store", True),
        ("https://store.evil.com/a.tar.gz", "https://store", False),
        ("s3://adapters/team/qv", "s3://adapters/", True),
        ("s3://adapters-evil/qv", "s3://adapters", False),
        ("s3://adapters/team-b/qv", "s3://adapters/team", False),
        ("s3://adapters/team", "s3://adapters/team", True),
    ],
)
def test_an_allowed_prefix_ends_at_a_path_segment(url: str, prefix: str, allowed: bool):
    if allowed:
        check_allowed(url, [prefix])
    else:
        with pytest.raises(ForbiddenError):
            check_allowed(url, [prefix])
