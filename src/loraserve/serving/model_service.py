"""One served model: its configuration, workers and adapters, and the adapter operations.

Adapter operations are serialised per model by one lock, which the worker restart path also
takes while it replays registrations, so a new worker never misses an adapter. An adapter a new
worker cannot load is marked failed (with its reason) instead of failing the restart: the
model keeps serving everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from loraserve.adapters import secure_mode
from loraserve.adapters.registry import (
    AdapterOrigin,
    AdapterRecord,
    AdapterRegistry,
    AdapterState,
    new_identity,
    validate_adapter_name,
)
from loraserve.adapters.s3 import is_s3
from loraserve.adapters.sources import handler_src, resolve_source, server_reads
from loraserve.config import ModelConfig, RemoteAccess, ServerConfig
from loraserve.errors import (
    AdapterNotFoundError,
    ConfigError,
    ConflictError,
    LoraserveError,
    ServiceUnavailableError,
    WorkerDiedError,
)
from loraserve.handler_kind import Handler, resolve_handler
from loraserve.serving.adapter_calls import AdapterCalls, Broadcast, EngineAdapterCalls, HandlerAdapterCalls
from loraserve.serving.served_model import InferObserver, timed_adapter_load
from loraserve.serving.worker_group import MAX_WORKERS, WorkerGroup
from loraserve.serving.worker_process import WorkerProcess, WorkerReply

log = logging.getLogger("loraserve.models")


class ModelStatus(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    RECOVERING = "RECOVERING"  # loaded, but no live worker until a restart in progress ends
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"


class ModelService:
    def __init__(
        self,
        name: str,
        model_dir: Path,
        url: str,
        server: ServerConfig,
        version: str | None = None,
        loaded_at_startup: bool = False,
        options: dict[str, str] | None = None,
        server_stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.name = name
        self.version = version
        self.model_dir = model_dir
        self.url = url
        self.server = server
        self.config = ModelConfig.from_directory(model_dir)
        self.config.options.update(options or {})
        self.loaded_at_startup = loaded_at_startup
        self.lifecycle = ModelStatus.LOADING
        self._error: str | None = None
        self.registry = AdapterRegistry()
        self.handler_messages: dict[str, str] = {}  # adapter → its handler's last status text
        self.observer: InferObserver | None = None  # set by the manager: metrics and request log
        self.adapter_lock = asyncio.Lock()
        self.created = time.time()
        self.last_used = time.monotonic()
        self.on_demand = False  # loaded by a multi-model endpoint call: may be evicted
        self.handler: Handler | None = None  # decided here, once
        with contextlib.suppress(ConfigError):  # names none: the worker's load reports why
            self.handler = resolve_handler(model_dir, self.config)
        env = {
            "LORASERVE_MODEL_OPTIONS": json.dumps(options or {}),
            "LORASERVE_HANDLER": self.handler.entry if self.handler else "",
        }
        self.workers = WorkerGroup(
            name,
            model_dir,
            self.config,
            env,
            self._replay_adapters,
            server.worker_start_timeout_s,
            server_stopping,
            max_workers=_worker_cap(server),
        )

    @property
    def status(self) -> ModelStatus:
        """What the model can do now: a loaded model with no live worker is not READY."""
        if self.lifecycle is not ModelStatus.READY or self.workers.serving:
            return self.lifecycle
        return ModelStatus.RECOVERING if self.workers.recovering else ModelStatus.FAILED

    @status.setter
    def status(self, value: ModelStatus) -> None:
        self.lifecycle = value

    @property
    def error(self) -> str | None:
        if self.status is ModelStatus.FAILED and self.lifecycle is ModelStatus.READY:
            return f"no live worker: {self.workers.failure or 'its worker is not running'}"
        return self._error

    @error.setter
    def error(self, value: str | None) -> None:
        self._error = value

    @property
    def uses_builtin_engine(self) -> bool:
        return self.handler is not None and self.handler.builtin

    @property
    def adapter_roots(self) -> list[Path]:
        """Where local adapter sources may come from; the resolver roots are always in."""
        roots = list(self.server.allowed_adapter_roots)
        if not roots:
            roots = [self.model_dir.resolve()]
            if self.server.model_store:
                roots.append(self.server.model_store)
        return roots + [Path(r) for r in self.resolver_roots if not is_s3(r)]

    @functools.cached_property
    def resolver_roots(self) -> list[str]:
        """Where an unregistered adapter a request names is looked up (``<root>/<name>``):
        ``option.adapter_resolvers`` (relative paths: from the model directory), then the
        server's ``--adapter-resolvers``. Fixed for the model's life, so worked out once (every
        request naming an adapter asks)."""
        listed = self.config.options.get("adapter_resolvers", "").split(",")
        roots = [r.strip() for r in listed if r.strip()] + list(self.server.adapter_resolvers)
        return [r if is_s3(r) else str((self.model_dir / r).resolve()) for r in roots]

    @property
    def remote_access(self) -> RemoteAccess:
        """The server's URL prefixes, plus the model's s3 resolver roots."""
        access = self.server.remote_access
        s3_roots = [r.rstrip("/") + "/" for r in self.resolver_roots if is_s3(r)]
        return RemoteAccess(access.allowed_urls + s3_roots, access.s3_endpoint_url)

    @property
    def scratch_dir(self) -> Path:
        base = self.server.state_file.parent if self.server.state_file else self.model_dir / ".loraserve"
        return base / "extracted" / self.name

    def _handler_path(self, src: str) -> str:
        """The handler's ``src``: resolved and sandboxed only where the server reads it."""
        if server_reads(src, self.uses_builtin_engine):
            return str(
                resolve_source(
                    src,
                    self.model_dir,
                    self.adapter_roots,
                    self.scratch_dir,
                    self.remote_access,
                )
            )
        return handler_src(src)

    async def load(self) -> None:
        try:
            secure_mode.check_model(self.model_dir, self.config.entry_point, self.config.options)
            await self.workers.start()
        except Exception as exc:
            self.status, self.error = ModelStatus.FAILED, str(exc)
            raise
        self.status = ModelStatus.READY

    async def unload(self) -> None:
        self.status = ModelStatus.UNLOADING
        await self.workers.stop()

    async def _replay_adapters(self, worker: WorkerProcess) -> None:
        """Register every ready adapter on a new worker before it takes requests; one that
        cannot be restored is marked failed, and the worker starts anyway."""
        async with self.adapter_lock:
            for record in self.registry.ready_records():
                try:
                    calls = self._calls(lambda fn, payload: _one(worker, fn, payload))
                    await calls.register(record, "restoring")
                except WorkerDiedError:
                    raise
                except LoraserveError as exc:
                    log.error(
                        "model %s: adapter %s could not be restored: %s", self.name, record.name, exc.message
                    )
                    self.registry.mark_failed(record.name, exc.message)

    async def _broadcast(self, fn: str, payload: Any) -> list[WorkerReply]:
        """An adapter operation on every live worker. With none live while a restart is under
        way, nothing to do now: the restart replays the registry as it is when it is ready."""
        if self.workers.recovering:
            return []
        return await self.workers.broadcast(fn, payload)

    def _calls(self, broadcast: Broadcast | None = None) -> AdapterCalls:
        """Adapter operations as this model's handler kind takes them (on every worker by default)."""
        send = broadcast or self._broadcast
        if self.uses_builtin_engine:
            return EngineAdapterCalls(send)
        return HandlerAdapterCalls(send, lambda: self.workers.hooks)

    def _require_ready(self) -> None:
        if self.lifecycle is not ModelStatus.READY:
            raise ServiceUnavailableError(f"model {self.name} is {self.lifecycle.value}, not ready")

    @timed_adapter_load
    async def register_adapter(
        self,
        name: str,
        src: str,
        preload: bool = True,
        pin: bool = False,
        options: dict[str, str] | None = None,
        origin: AdapterOrigin = AdapterOrigin.API,
        keep_failed: bool = False,
    ) -> AdapterRecord:
        """Register on every worker. ``keep_failed`` (restoring a saved registration): if it
        cannot be loaded, keep it as failed with the reason instead of raising."""
        validate_adapter_name(name)
        self._require_ready()
        async with self.adapter_lock:
            if name in self.registry:
                raise ConflictError(
                    f"adapter {name} is already registered on model {self.name}; "
                    "update it or unregister it first"
                )
            record = AdapterRecord(
                name=name,
                src=src,
                path="",
                preload=preload,
                pin=pin,
                options=dict(options or {}),
                origin=origin,
            )
            try:
                await self._register_new(record)
            except LoraserveError as exc:
                if not keep_failed:
                    raise
                self.registry.keep_failed(record, exc.message)
                log.error("model %s: adapter %s kept as failed: %s", self.name, name, exc.message)
                return record
            log.info("model %s: adapter %s registered from %s", self.name, name, src)
            return record

    async def _register_new(self, record: AdapterRecord) -> None:
        record.path = await asyncio.to_thread(self._handler_path, record.src)
        await asyncio.to_thread(secure_mode.check_adapter, Path(record.path))
        self.registry.begin_register(record)
        try:
            self._keep_message(record.name, await self._calls().register(record))
        except BaseException:
            self.registry.abort_register(record.name)
            await self._unregister_quietly(record)
            raise
        self.registry.finish_register(record.name)

    async def _unregister_quietly(self, record: AdapterRecord) -> None:
        """Undo a half-done registration on the workers that accepted it."""
        try:
            await self._calls().unregister(record.name, check=False)
        except Exception as exc:  # best effort: the registration already failed
            log.warning("model %s: cleanup of adapter %s failed: %s", self.name, record.name, exc)

    @timed_adapter_load
    async def update_adapter(
        self, name: str, src: str | None, preload: bool | None, pin: bool | None, options: dict[str, str]
    ) -> AdapterRecord:
        self._require_ready()
        async with self.adapter_lock:
            record = self.registry.settled(name)  # a failed adapter is fixed by an update
            # Always resolved again: an archive replaced under the same src unpacks to a new
            # (content-addressed) directory; a directory resolves to itself and is reloaded.
            path = await asyncio.to_thread(self._handler_path, src or record.src)
            await asyncio.to_thread(secure_mode.check_adapter, Path(path))
            updated = AdapterRecord(
                name=name,
                src=src or record.src,
                path=path,
                preload=record.preload if preload is None else preload,
                pin=record.pin if pin is None else pin,
                options={**record.options, **options},
                origin=record.origin,
                version=record.version + 1,
                registered_at=record.registered_at,
            )
            await self._apply_update(updated)
            record.src, record.path, record.preload, record.pin = (
                updated.src,
                updated.path,
                updated.preload,
                updated.pin,
            )
            record.options, record.version, record.identity = (
                updated.options,
                updated.version,
                updated.identity,
            )
            self.registry.finish_register(name)  # ready again, if it had failed
            return record

    async def restore_adapter(self, snapshot: AdapterRecord) -> None:
        """Put an earlier version of a registered adapter back (an update whose new state could
        not be saved is undone, so what is served matches what a restart would restore)."""
        async with self.adapter_lock:
            record = self.registry.get(snapshot.name)
            version = record.version + 1  # new to the workers, though its content is the old one
            restored = dataclasses.replace(snapshot, version=version, identity=new_identity())
            try:
                await self._apply_update(restored)
            except LoraserveError as exc:
                self.registry.mark_failed(snapshot.name, f"could not be restored: {exc.message}")
                raise
            finally:
                record.src, record.path, record.preload, record.pin = (
                    snapshot.src,
                    snapshot.path,
                    snapshot.preload,
                    snapshot.pin,
                )
                record.options, record.version = dict(snapshot.options), version
                record.identity = restored.identity
            record.state, record.error = snapshot.state, snapshot.error

    async def _apply_update(self, updated: AdapterRecord) -> None:
        self._keep_message(updated.name, await self._calls().update(updated))
        current = self.registry.get(updated.name)  # the new version's model.py, as loaded
        current.has_custom_code, current.formatters = updated.has_custom_code, updated.formatters

    async def unregister_adapter(self, name: str) -> AdapterRecord:
        self._require_ready()
        async with self.adapter_lock:
            record, previous = self.registry.begin_unregister(name)
            try:
                # a failed one may be on no worker: its refusal is no error
                message = await self._calls().unregister(name, check=previous is not AdapterState.FAILED)
                self._keep_message(name, message)
            except BaseException:
                self.registry.abort_unregister(name, previous)  # still registered
                raise
            self.registry.finish_unregister(name)
            log.info("model %s: adapter %s unregistered", self.name, name)
            return record

    def _keep_message(self, name: str, message: str | None) -> None:
        if message:
            self.handler_messages[name] = message

    def check_adapters(self, names: list[str], required: list[str] | None = None) -> None:
        """Checked before any work is done. An adapter in ``required`` (default: all of
        ``names``) that is not registered is DJL's 424 (its ModelInfo check); any named adapter
        that failed to load is a 503 with the reason. A custom handler's request requires only
        ``?adapter=`` (DJL's content key): other names are the handler's business."""
        self._require_ready()  # while it loads, its adapters are not restored yet: 503, not 424
        for adapter in names if required is None else required:
            if adapter and adapter not in self.registry:
                raise AdapterNotFoundError(
                    f"The adapter {adapter} has not been registered on model {self.name}; "
                    f"register it with POST /models/{self.name}/adapters?name={adapter}&src=…",
                    status_code=424,
                )
        for adapter in {*names, *(required or ())}:
            record = self.registry.get(adapter) if adapter and adapter in self.registry else None
            if record is not None and record.state is AdapterState.FAILED:
                raise ServiceUnavailableError(
                    f"adapter {adapter} of model {self.name} failed to load: {record.error}; "
                    f"fix its source and POST /models/{self.name}/adapters/{adapter}/update, "
                    "or unregister it"
                )

    async def infer(self, wire_input: Any, fn: str = "handle", adapter: str = "") -> WorkerReply:
        """``handle`` with a DJL Input (wire form), or a typed hook (``generate``) with its
        message; the observer (request metrics and log) sees every call."""
        call = self._infer(wire_input, fn)
        return await (self.observer.observe(self.name, adapter, call) if self.observer else call)

    async def _infer(self, wire_input: Any, fn: str) -> WorkerReply:
        self._require_ready()
        self.last_used = time.monotonic()
        return await self.workers.submit(wire_input, fn)

    def idle(self) -> bool:
        group = self.workers
        return not (group.queue_length or group.collecting or any(w.in_flight for w in group.workers))

    def summary(self) -> dict[str, Any]:
        return {"modelName": self.name, "modelUrl": self.url, "status": self.status.value}

    def describe(self) -> dict[str, Any]:
        return {
            "modelName": self.name,
            "modelVersion": self.version,
            "modelUrl": self.url,
            "engine": self.config.engine,
            "batchSize": self.config.batch_size,
            "maxBatchDelayMillis": self.config.max_batch_delay_ms,
            "maxIdleSeconds": self.config.max_idle_seconds,
            "queueSize": self.config.job_queue_size,
            "requestInQueue": self.workers.queue_length,
            "requestInBatch": self.workers.collecting,
            "status": self.status.value,
            "error": self.error,
            "loadedAtStartup": self.loaded_at_startup,
            "adapters": len(self.registry),
            "workerRestarts": self.workers.restarts,
            "workerGroups": [
                {
                    "device": {"deviceType": "cpu", "deviceId": -1},
                    "minWorkers": self.config.min_workers,
                    "maxWorkers": self.config.max_workers,
                    "workers": [w.describe() for w in self.workers.workers],
                }
            ],
        } | ({"hardware": self._hardware()} if self.uses_builtin_engine else {})

    def _hardware(self) -> dict[str, str]:
        """The built-in engine's start-up choice on this CPU (ISA, compute dtype)."""
        from loraserve.model.hardware import describe_choice  # the engine side: torch, loaded lazily

        try:
            return describe_choice(self.config.options.get("dtype"), self.config.options.get("device"))
        except LoraserveError as exc:  # a bad option.dtype: the model's own load reports it
            return {"error": str(exc)}


def _worker_cap(server: ServerConfig) -> int:
    """The server's per-model worker limit where it has one; the group's hard cap bounds it."""
    return int(getattr(server, "max_workers_per_model", MAX_WORKERS))


async def _one(worker: WorkerProcess, fn: str, payload: Any) -> list[WorkerReply]:
    return [await worker.call(fn, payload)]
