"""The engine replica: one built-in engine per Ray Serve replica (CPU, or the GPU Ray gave it),
driven through the built-in LMI handler, so every request is served exactly as by one
``loraserve serve`` worker.

The adapter name is Ray's multiplexed model id: ``get_adapter`` is the multiplexed loader
(Ray keeps an LRU of ``max_adapters_per_replica`` per replica and routes each adapter's
requests to replicas that hold it). No ``@serve.batch``: it splits batches per model id, while
here requests of every adapter join the engine's one continuous batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ray import serve

from loraserve.errors import LoraserveError
from loraserve.handlers import builtin_llm
from loraserve.handlers.io import Input, Output
from loraserve.handlers.protocol import input_from_wire, output_to_wire
from loraserve.model.peft_adapter import load_peft_adapter
from loraserve.ray_serve.adapter_store import AdapterRef, SharedAdapterStore
from loraserve.ray_serve.config import RayAppConfig
from loraserve.ray_serve.replica_adapters import LoadedAdapter, ReplicaAdapters

log = logging.getLogger("loraserve.ray.replica")


def error_reply(exc: LoraserveError) -> dict[str, Any]:
    return {"output": output_to_wire(Output().error(exc.message, code=exc.status_code,
                                                    message=exc.error_type))}


class EngineReplica:
    async def __init__(self, config: RayAppConfig) -> None:
        warm_up = Input()
        warm_up.properties.update(config.replica_properties())
        await builtin_llm.handle(warm_up)  # DJL's initialisation call: builds and starts the engine
        self.engine = builtin_llm.engine()
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

    async def generate(self, wire: dict[str, Any], refs: list[AdapterRef]) -> dict[str, Any]:
        """One LMI request, answered whole: ``{"output": wire Output, "replica": id}``."""
        names: list[str] = []
        try:
            await self._hold(refs, names)
            self.adapters.count_request(names)
            output = await builtin_llm.handle(input_from_wire(wire))
        except LoraserveError as exc:
            return error_reply(exc)
        finally:
            self.adapters.release(names)
        return {"output": output_to_wire(output), "replica": self.replica}

    async def generate_stream(self, wire: dict[str, Any], refs: list[AdapterRef]) -> AsyncIterator[Any]:
        """One streamed LMI request: first ``{"output", "replica"}``, then ``bytes`` chunks."""
        names: list[str] = []
        try:
            await self._hold(refs, names)
            self.adapters.count_request(names)
            output = await builtin_llm.handle(input_from_wire(wire))
        except LoraserveError as exc:
            self.adapters.release(names)
            yield error_reply(exc)
            return
        except BaseException:
            self.adapters.release(names)
            raise
        try:
            yield {"output": output_to_wire(output), "replica": self.replica}
            if output.stream_content is not None:
                async for chunk in output.stream_content:
                    yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        finally:
            self.adapters.release(names)

    async def check_adapter(self, path: str) -> dict[str, Any] | None:
        """Validate a PEFT adapter against this base model (what registration does), or say why not."""
        engine = self.engine
        try:
            if not engine.config.enable_lora:
                raise LoraserveError("LoRA is disabled for this model (option.enable_lora=false)", 400)
            await asyncio.to_thread(load_peft_adapter, Path(path), engine.runner.args,
                                    engine.config.max_lora_rank, engine.dtype)
        except LoraserveError as exc:
            return {"status": exc.status_code, "type": exc.error_type, "message": exc.message}
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
        engine = json.loads((await builtin_llm.stats(Input())).content.value_at(0))
        return {"replica": self.replica, "engine": engine, **self.adapters.snapshot()}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._syncing.cancel()
