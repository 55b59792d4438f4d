"""Load on first request: an adapter a request names that is not registered is looked up as
``<root>/<name>`` under the model's resolver roots (``option.adapter_resolvers`` or the
server's ``--adapter-resolvers``: local directories and ``s3://`` prefixes), fetched, checked,
registered like any other (saved, restored after a restart) and then served.

vLLM's resolver plugins and Ray Serve LLM's lazily scanned bucket are the pattern. Concurrent
requests for one unknown name share one lookup (the lookup is shielded: a client that goes
away does not cancel it for the others); a name found nowhere, or whose registration failed,
is remembered for ``NEGATIVE_TTL_S`` so a stream of requests for it costs no store round
trips. A name outside every root stays DJL's 424 (``check_adapters``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from loraserve.adapters.registry import AdapterOrigin
from loraserve.adapters.s3 import is_s3, prefix_exists
from loraserve.errors import LoraserveError
from loraserve.names import NAME_PATTERN
from loraserve.serving.model_service import ModelService

log = logging.getLogger("loraserve.adapters")
NEGATIVE_TTL_S = 30.0
MAX_REMEMBERED = 10_000  # misses kept: a client asking for random names cannot grow it further
Register = Callable[[ModelService, str, str, AdapterOrigin], Awaitable[None]]


class AdapterResolver:
    def __init__(self, register: Register) -> None:
        self.register = register  # the durable registration every route uses
        self._lookups: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._misses: dict[tuple[str, str], tuple[float, LoraserveError | None]] = {}

    async def ensure(self, model: ModelService, names: list[str]) -> None:
        """Register each of ``names`` that a resolver root holds and the model lacks; raise a
        lookup's error (a damaged adapter, a store that fails) to the request that needs it."""
        if not model.resolver_roots:
            return
        for name in dict.fromkeys(names):
            if name and name not in model.registry and NAME_PATTERN.match(name):
                await self._resolve_once(model, name)

    async def _resolve_once(self, model: ModelService, name: str) -> None:
        key = (model.name, name)
        missed = self._misses.get(key)
        if missed is not None:
            until, error = missed
            if time.monotonic() < until:
                if error is not None:
                    raise error
                return
            del self._misses[key]
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(model, name))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._done(key, done))
        await asyncio.shield(lookup)

    def _done(self, key: tuple[str, str], lookup: asyncio.Future[None]) -> None:
        self._lookups.pop(key, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved here too: every waiter may have gone

    def _remember(self, key: tuple[str, str], error: LoraserveError | None) -> None:
        while len(self._misses) >= MAX_REMEMBERED:
            del self._misses[next(iter(self._misses))]  # the oldest
        self._misses[key] = (time.monotonic() + NEGATIVE_TTL_S, error)

    async def _lookup(self, model: ModelService, name: str) -> None:
        key = (model.name, name)
        try:
            src = await self._find(model, name)
            if src is None:
                self._remember(key, None)
                return
            if name in model.registry:  # registered meanwhile by the API
                return
            started = time.monotonic()
            await self.register(model, name, src, AdapterOrigin.RESOLVER)
            log.info(
                "model %s: adapter %s resolved from %s in %.2f s",
                model.name,
                name,
                src,
                time.monotonic() - started,
            )
        except LoraserveError as exc:
            if name in model.registry:  # the API registered it first (a 409 for us): served
                return
            self._remember(key, exc)
            log.warning("model %s: adapter %s could not be resolved: %s", model.name, name, exc.message)
            raise

    async def _find(self, model: ModelService, name: str) -> str | None:
        """The first root holding ``name``: a folder for a local root, objects under the
        prefix for an s3 one."""
        for root in model.resolver_roots:
            candidate = f"{root.rstrip('/')}/{name}"
            if is_s3(root):
                endpoint = model.remote_access.s3_endpoint_url
                if await asyncio.to_thread(prefix_exists, candidate, endpoint):
                    return candidate
            elif await asyncio.to_thread(Path(candidate).is_dir):
                return candidate
        return None

    def forget(self, model: str, name: str) -> None:
        """Drop a remembered miss (the adapter was registered or its source fixed)."""
        self._misses.pop((model, name), None)
