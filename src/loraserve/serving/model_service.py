"""One served model: its configuration, workers and adapters, and the adapter operations.

Adapter operations are serialised per model by one lock, which the worker restart path also
takes while it replays registrations, so a new worker never misses an adapter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from enum import Enum
from pathlib import Path
from typing import Any

from loraserve.adapters.registry import (
    AdapterOrigin,
    AdapterRecord,
    AdapterRegistry,
    validate_adapter_name,
)
from loraserve.adapters.sources import handler_src, resolve_source, server_reads
from loraserve.config import ModelConfig, ServerConfig
from loraserve.errors import (
    AdapterNotFoundError,
    ConflictError,
    HandlerError,
    ServiceUnavailableError,
)
from loraserve.serving.worker_group import WorkerGroup
from loraserve.serving.worker_process import WorkerProcess, WorkerReply

log = logging.getLogger("loraserve.models")


class ModelStatus(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"


def registration_input(record: AdapterRecord) -> dict[str, Any]:
    """The Input a handler's register/update hook gets, shaped as DJL builds it:
    ``name`` and ``src`` as properties; ``preload``, ``pin`` and extra options as content."""
    content = [("preload", str(record.preload).lower().encode()),
               ("pin", str(record.pin).lower().encode())]
    content += [(k, str(v).encode()) for k, v in record.options.items()]
    properties = {"name": record.name, "alias": record.name, "src": record.path,
                  "version": str(record.version)}
    return {"properties": properties, "content": content}


def _raise_for_reply(replies: list[WorkerReply], action: str) -> None:
    for reply in replies:
        if reply.output is not None and reply.output["code"] >= 400:
            body = b"".join(v for _, v in reply.output["content"]).decode("utf-8", "replace")
            detail = _error_detail(body) or reply.output["message"]
            raise HandlerError(f"{action} refused by the handler: {detail}",
                               status_code=reply.output["code"])


def handler_message(replies: list[WorkerReply]) -> str | None:
    """The message a handler set on its Output (DJL answers it as the status); None if unset."""
    output = replies[0].output if replies else None
    message = output.get("message") if output else None
    return message if message and message != "OK" else None


def _error_detail(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict):
        return str(parsed.get("error") or parsed.get("message") or body)
    return body


class ModelService:
    def __init__(self, name: str, model_dir: Path, url: str, server: ServerConfig,
                 version: str | None = None, loaded_at_startup: bool = False,
                 options: dict[str, str] | None = None) -> None:
        self.name = name
        self.version = version
        self.model_dir = model_dir
        self.url = url
        self.server = server
        self.config = ModelConfig.from_directory(model_dir)
        self.config.options.update(options or {})
        self.loaded_at_startup = loaded_at_startup
        self.status = ModelStatus.LOADING
        self.error: str | None = None
        self.registry = AdapterRegistry()
        self.handler_messages: dict[str, str] = {}  # adapter → its handler's last status text
        self.adapter_lock = asyncio.Lock()
        self.created = time.time()
        self.last_used = time.monotonic()
        self.on_demand = False  # loaded by a multi-model endpoint call: may be evicted
        env = {"LORASERVE_MODEL_OPTIONS": json.dumps(options or {})}
        self.workers = WorkerGroup(name, model_dir, self.config, env, self._replay_adapters,
                                   server.worker_start_timeout_s)

    @property
    def uses_builtin_engine(self) -> bool:
        return self.config.uses_builtin_engine and not (self.model_dir / "model.py").is_file()

    @property
    def adapter_roots(self) -> list[Path]:
        roots = list(self.server.allowed_adapter_roots)
        if not roots:
            roots = [self.model_dir.resolve()]
            if self.server.model_store:
                roots.append(self.server.model_store)
        return roots

    @property
    def scratch_dir(self) -> Path:
        base = self.server.state_file.parent if self.server.state_file else self.model_dir / ".loraserve"
        return base / "extracted" / self.name

    def _handler_path(self, src: str) -> str:
        """The handler's ``src``: resolved and sandboxed only where the server reads it."""
        if server_reads(src, self.uses_builtin_engine):
            return str(resolve_source(src, self.model_dir, self.adapter_roots, self.scratch_dir))
        return handler_src(src)

    async def load(self) -> None:
        try:
            await self.workers.start()
        except Exception as exc:
            self.status, self.error = ModelStatus.FAILED, str(exc)
            raise
        self.status = ModelStatus.READY

    async def unload(self) -> None:
        self.status = ModelStatus.UNLOADING
        await self.workers.stop()

    async def _replay_adapters(self, worker: WorkerProcess) -> None:
        """Register every known adapter on a new worker before it takes requests."""
        async with self.adapter_lock:
            for record in self.registry.ready_records():
                reply = await worker.call("register_adapter", registration_input(record))
                _raise_for_reply([reply], f"re-registering adapter {record.name}")

    def _require_ready(self) -> None:
        if self.status is not ModelStatus.READY:
            raise ServiceUnavailableError(f"model {self.name} is {self.status.value}, not ready")

    async def register_adapter(self, name: str, src: str, preload: bool = True, pin: bool = False,
                               options: dict[str, str] | None = None,
                               origin: AdapterOrigin = AdapterOrigin.API) -> AdapterRecord:
        validate_adapter_name(name)
        self._require_ready()
        async with self.adapter_lock:
            if name in self.registry:
                raise ConflictError(f"adapter {name} is already registered on model {self.name}; "
                                    "update it or unregister it first")
            path = await asyncio.to_thread(self._handler_path, src)
            record = AdapterRecord(name=name, src=src, path=str(path), preload=preload, pin=pin,
                                   options=dict(options or {}), origin=origin)
            self.registry.begin_register(record)
            try:
                replies = await self.workers.broadcast("register_adapter", registration_input(record))
                _raise_for_reply(replies, f"registering adapter {name}")
                self._keep_message(name, replies)
            except BaseException:
                self.registry.abort_register(name)
                await self._unregister_quietly(record)
                raise
            self.registry.finish_register(name)
            log.info("model %s: adapter %s registered from %s", self.name, name, src)
            return record

    async def _unregister_quietly(self, record: AdapterRecord) -> None:
        """Undo a half-done registration on the workers that accepted it."""
        try:
            await self.workers.broadcast("unregister_adapter", {
                "properties": {"name": record.name}, "content": []})
        except Exception as exc:  # best effort: the registration already failed
            log.warning("model %s: cleanup of adapter %s failed: %s", self.name, record.name, exc)

    async def update_adapter(self, name: str, src: str | None, preload: bool | None,
                             pin: bool | None, options: dict[str, str]) -> AdapterRecord:
        self._require_ready()
        async with self.adapter_lock:
            record = self.registry.ready(name)
            path = record.path
            if src is not None and src != record.src:
                path = await asyncio.to_thread(self._handler_path, src)
            updated = AdapterRecord(
                name=name, src=src or record.src, path=path,
                preload=record.preload if preload is None else preload,
                pin=record.pin if pin is None else pin,
                options={**record.options, **options}, origin=record.origin,
                version=record.version + 1, registered_at=record.registered_at,
            )
            await self._apply_update(updated)
            record.src, record.path, record.preload, record.pin = (
                updated.src, updated.path, updated.preload, updated.pin)
            record.options, record.version = updated.options, updated.version
            return record

    async def _apply_update(self, updated: AdapterRecord) -> None:
        wire = registration_input(updated)
        if "update_adapter" in self.workers.hooks:
            replies = await self.workers.broadcast("update_adapter", wire)
            _raise_for_reply(replies, f"updating adapter {updated.name}")
            self._keep_message(updated.name, replies)
        elif "register_adapter" in self.workers.hooks:
            await self.workers.broadcast("unregister_adapter", {
                "properties": {"name": updated.name}, "content": []})
            _raise_for_reply(await self.workers.broadcast("register_adapter", wire),
                             f"re-registering adapter {updated.name}")

    async def unregister_adapter(self, name: str) -> AdapterRecord:
        self._require_ready()
        async with self.adapter_lock:
            record = self.registry.begin_unregister(name)
            try:
                replies = await self.workers.broadcast("unregister_adapter", {
                    "properties": {"name": name}, "content": []})
                _raise_for_reply(replies, f"unregistering adapter {name}")
                self._keep_message(name, replies)
            except BaseException:
                self.registry.finish_register(name)  # still registered: back to ready
                raise
            self.registry.finish_unregister(name)
            log.info("model %s: adapter %s unregistered", self.name, name)
            return record

    def _keep_message(self, name: str, replies: list[WorkerReply]) -> None:
        message = handler_message(replies)
        if message:
            self.handler_messages[name] = message

    def check_adapters(self, names: list[str]) -> None:
        """An adapter that is not registered is DJL's 424 before the handler runs."""
        ready = {r.name for r in self.registry.ready_records()}
        for adapter in names:
            if adapter and adapter not in ready:
                raise AdapterNotFoundError(
                    f"The adapter {adapter} has not been registered on model {self.name}; "
                    f"register it with POST /models/{self.name}/adapters?name={adapter}&src=…",
                    status_code=424)

    async def infer(self, wire_input: dict[str, Any]) -> WorkerReply:
        self._require_ready()
        self.last_used = time.monotonic()
        return await self.workers.submit(wire_input)

    def idle(self) -> bool:
        return self.workers.queue_length == 0 and not any(w.in_flight for w in self.workers.workers)

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
            "status": self.status.value,
            "error": self.error,
            "loadedAtStartup": self.loaded_at_startup,
            "adapters": len(self.registry),
            "workerRestarts": self.workers.restarts,
            "workerGroups": [{
                "device": {"deviceType": "cpu", "deviceId": -1},
                "minWorkers": self.config.min_workers,
                "maxWorkers": self.config.max_workers,
                "workers": [w.describe() for w in self.workers.workers],
            }],
        }
