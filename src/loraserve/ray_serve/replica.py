"""The engine replica: one built-in engine per Ray Serve replica (CPU, or the GPU Ray gave it),
driven through the built-in handler's typed ``generate`` hook (the ``GenerateRequest`` the
ingress's routes parsed), so every request is served exactly as by one ``loraserve serve`` worker.

The adapter name is Ray's multiplexed model id: ``get_adapter`` is the multiplexed loader
(Ray keeps an LRU of ``max_adapters_per_replica`` per replica and routes each adapter's
requests to replicas that hold it). No ``@serve.batch``: it splits batches per model id, while
here requests of every adapter join the engine's one continuous batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import serve

from loraserve.errors import LoraserveError
from loraserve.handlers import builtin_llm
from loraserve.handlers.heap import freeze_loaded_heap
from loraserve.handlers.io import Input
from loraserve.model.peft_adapter import load_peft_adapter
from loraserve.ray_serve.adapter_store import AdapterRef, SharedAdapterStore
from loraserve.ray_serve.config import RayAppConfig
from loraserve.ray_serve.replica_adapters import LoadedAdapter, ReplicaAdapters
from loraserve.wire.errors import encode_error
from loraserve.wire.messages import GenerateRequest, TokenStream

log = logging.getLogger("loraserve.ray.replica")


def problem_of(exc: Exception) -> dict[str, Any]:
    """An exception as plain data for the ingress (``wire.errors``: the worker's encoding, which
    ``routing`` decodes): a typed refusal keeps its status and type, a failure is logged here."""
    if not isinstance(exc, LoraserveError):
        log.error("generate failed", exc_info=exc)
    return encode_error(exc)


class EngineReplica:
    # An async constructor: Ray Serve awaits it before the replica takes requests.
    async def __init__(self, config: RayAppConfig) -> None:  # type: ignore[misc]
        warm_up = Input()
        warm_up.properties.update(config.replica_properties())
        await builtin_llm.handle(warm_up)  # DJL's initialisation call: builds and starts the engine
        self.engine = builtin_llm.engine()
        freeze_loaded_heap()  # the replica process serves this model for its life
        self.adapters = ReplicaAdapters(self.engine)
        self.store = SharedAdapterStore(config.loraserve_dir / "state.json", config.model_name)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.interval = config.sync_interval_s
        self.get_adapter = self._multiplexed_loader(config.max_adapters_per_replica)
        await self.sync()
        self._syncing = asyncio.get_running_loop().create_task(self._sync_forever())

    def _multiplexed_loader(self, lru_size: int):
        """Ray's multiplexed loader, bound at run time so the LRU size comes from the config
        (a plain function: Ray keeps its LRU as an attribute of it)."""

        async def get_adapter(name: str) -> LoadedAdapter:
            return self.adapters.handle_for(name)

        return serve.multiplexed(max_num_models_per_replica=lru_size)(get_adapter)

    async def _hold(self, refs: list[AdapterRef], held: list[str]) -> None:
        """Every adapter of the request loaded at its revision and marked in use; ``held``
        lists those marked so far, for the caller to release on every path."""
        for ref in refs:
            if not ref.pin:
                await self.get_adapter(ref.name)  # Ray's LRU: touch, or load and maybe evict another
            await self.adapters.ensure(ref)
            self.adapters.acquire([ref.name])
            held.append(ref.name)

    async def generate(self, message: GenerateRequest, refs: list[AdapterRef]) -> dict[str, Any]:
        """One request answered whole: ``{"output": GenerateResult, "replica": id}``, or
        ``{"error": problem, "replica": id}``."""
        names: list[str] = []
        try:
            await self._hold(refs, names)
            self.adapters.count_request(names)
            result = await builtin_llm.generate(replace(message, stream=False))
        except Exception as exc:
            return {"error": problem_of(exc), "replica": self.replica}
        finally:
            self.adapters.release(names)
        return {"output": result, "replica": self.replica}

    async def generate_stream(self, message: GenerateRequest, refs: list[AdapterRef]) -> AsyncIterator[Any]:
        """One streamed request: first ``{"replica": id}`` (or ``{"error", "replica"}``), then
        its ``TokenOutput``s, and ``{"error"}`` last if it failed midway. Ray cancelling the
        call (the client left) closes the engine's event stream, which aborts the sequence."""
        names: list[str] = []
        try:
            await self._hold(refs, names)
            self.adapters.count_request(names)
            stream = await builtin_llm.generate(replace(message, stream=True))
            assert isinstance(stream, TokenStream)
        except Exception as exc:
            self.adapters.release(names)
            yield {"error": problem_of(exc), "replica": self.replica}
            return
        except BaseException:
            self.adapters.release(names)
            raise
        events = stream.events
        try:
            yield {"replica": self.replica}
            async for event in events:
                yield event
        except Exception as exc:
            yield {"error": problem_of(exc)}
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # aborts what still runs
            self.adapters.release(names)

    async def check_adapter(self, path: str) -> dict[str, Any] | None:
        """Validate a PEFT adapter against this base model (what registration does), or say why not."""
        engine = self.engine
        try:
            if not engine.config.enable_lora:
                raise LoraserveError("LoRA is disabled for this model (option.enable_lora=false)", 400)
            await asyncio.to_thread(
                load_peft_adapter, Path(path), engine.runner.args, engine.config.max_lora_rank, engine.dtype
            )
        except LoraserveError as exc:
            return encode_error(exc)
        return None

    async def load_adapter(self, ref: AdapterRef) -> str:
        """Preload: hold ``ref`` now (called with ``ref.name`` as the multiplexed id)."""
        held: list[str] = []
        try:
            await self._hold([ref], held)
        finally:
            self.adapters.release(held)
        return self.replica

    async def sync(self) -> str:
        """Follow the shared registry (broadcast after each change; also on a timer, for
        replicas that were starting when the broadcast went out)."""
        await self.adapters.sync(await asyncio.to_thread(self.store.refs))
        return self.replica

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync()
            except Exception:  # the next tick tries again; requests never wait on this
                log.exception("replica sync failed")

    async def stats(self) -> dict[str, Any]:
        """This replica's engine figures and adapters, for the ingress's ``/metrics``."""
        engine = builtin_llm.engine_stats()
        return {"replica": self.replica, "engine": engine, **self.adapters.snapshot()}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._syncing.cancel()
