"""All served models: start-up loading, register/unregister, lookup, adapter persistence."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from loraserve.adapters.archives import prune_extractions
from loraserve.adapters.registry import AdapterOrigin, AdapterRecord, AdapterState
from loraserve.adapters.remote import prune_downloads
from loraserve.adapters.saved import entry_of, removed_startup, saved_records
from loraserve.config import ServerConfig
from loraserve.errors import (
    BadRequestError,
    ConflictError,
    LoraserveError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from loraserve.model_store import (
    discover_models,
    find_in_store,
    is_workflow_dir,
    is_workflow_url,
    resolve_model_url,
    startup_adapter_dirs,
)
from loraserve.names import validate_model_name
from loraserve.serving.adapter_admin import DurableAdapters
from loraserve.serving.adapter_resolver import AdapterResolver
from loraserve.serving.lora_gate import lora_enabled
from loraserve.serving.model_service import ModelService
from loraserve.serving.served_model import InferObserver
from loraserve.serving.state_store import StateStore

log = logging.getLogger("loraserve.models")
# What state.json keeps: start-up adapters come back from adapters/, a workflow declares its own.
_SAVED_ORIGINS = (AdapterOrigin.API, AdapterOrigin.RESOLVER)


class ModelManager:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.models: dict[str, ModelService] = {}
        self.state = StateStore(config.state_file)
        self._saved = self.state.load()  # always what is on disk: changed only by a save
        self._leaving: dict[str, dict[str, AdapterRecord]] = {}  # model → adapters going away
        self._lock = asyncio.Lock()
        self._loading: dict[str, asyncio.Task] = {}
        self.evictions = 0
        self.stopping = False  # set by the shutdown signal, before the app's shutdown runs
        self.adapters = DurableAdapters(self)  # what the routes call to change adapters
        self.resolver = AdapterResolver(  # load on first request, registered like the API does
            lambda model, name, src, origin: self.adapters.register(model, name, src, True, False, {}, origin)
        )
        self.observer: InferObserver | None = None  # handed to every model (request metrics and log)

    def watch_shutdown_signals(self) -> None:
        """Note SIGTERM/SIGINT as they arrive, then let the server's own handler run.

        The signal reaches the whole process group, workers included, before the server
        gets to its shutdown; knowing it, the worker groups do not restart those workers.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # in-process servers (tests) have no signals to watch
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if getattr(previous, "loraserve_watch", False):
                continue
            signal.signal(signum, _chained(self, previous))

    @property
    def scratch_dir(self) -> Path:
        base = self.config.state_file.parent if self.config.state_file else Path.cwd() / ".loraserve"
        return base / "models"

    async def start(self) -> None:
        """Load the model store and ``--models``; a model that fails is reported, not fatal."""
        found: dict[str, str] = {}
        if self.config.model_store:
            found.update(
                {
                    n: str(p)
                    for n, p in discover_models(self.config.model_store).items()
                    if not is_workflow_dir(p)
                }
            )
        found.update(
            {n: u for n, u in self.config.models.items() if not is_workflow_url(u)}
        )  # workflows: loaded by the workflow manager
        self.watch_shutdown_signals()
        results = await asyncio.gather(
            *(self.register(name, url, startup=True) for name, url in found.items()), return_exceptions=True
        )
        for name, result in zip(found, results):
            if isinstance(result, BaseException):
                log.error("model %s failed to load: %s", name, result)

    def get(self, name: str) -> ModelService:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"model {name} not found")
        return model

    def single_model(self) -> ModelService:
        """The model ``/invocations`` and ``/adapters`` mean when none is named."""
        if len(self.models) == 1:
            return next(iter(self.models.values()))
        if not self.models:
            raise ModelNotFoundError("no model is loaded")
        raise BadRequestError(
            "several models are loaded; name one with X-Amzn-SageMaker-Target-Model, "
            "?model_name= or /models/{name}/..."
        )

    async def register(
        self,
        name: str,
        url: str,
        startup: bool = False,
        version: str | None = None,
        options: dict[str, str] | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> ModelService:
        validate_model_name(name)  # the name becomes a directory under the state dir
        async with self._lock:
            if name in self.models:
                raise ConflictError(f"model {name} is already registered")
            path = await asyncio.to_thread(resolve_model_url, url, self.config.model_store, self.scratch_dir)
            model = ModelService(
                name,
                path,
                url,
                self.config,
                version=version,
                loaded_at_startup=startup,
                options=options,
                server_stopping=lambda: self.stopping,
            )
            model.observer = self.observer
            for key, value in (overrides or {}).items():
                setattr(model.config, key, value)
            model.workers.target = model.config.min_workers
            self.models[name] = model
        try:
            await model.load()
        except LoraserveError:
            if not startup:
                self.models.pop(name, None)
            raise
        await self._restore_adapters(model)
        return model

    async def get_or_load(self, name: str) -> ModelService:
        """SageMaker multi-model endpoints: load ``name`` from the store on its first call,
        making room by evicting the least recently used idle model loaded that way."""
        model = self.models.get(name)
        if model is not None and name not in self._loading:
            return model
        if name not in self._loading:
            path = find_in_store(self.config.model_store, name)
            if path is None:
                raise ModelNotFoundError(f"model {name} not found (not loaded, not in the model store)")
            self._loading[name] = asyncio.ensure_future(self._load_on_demand(name, path))
        task = self._loading[name]
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._loading.pop(name, None)

    async def _load_on_demand(self, name: str, path: Path) -> ModelService:
        await self._make_room()
        model = await self.register(name, str(path))
        model.on_demand = True
        return model

    async def _make_room(self) -> None:
        limit = self.config.max_loaded_models
        while limit and len(self.models) >= limit:
            idle = [m for m in self.models.values() if m.on_demand and m.idle()]
            if not idle:
                raise ServiceUnavailableError(
                    f"{len(self.models)} models are loaded (max_loaded_models={limit}) and none is "
                    "idle to evict; retry later"
                )
            victim = min(idle, key=lambda m: m.last_used)
            log.info("evicting model %s (least recently used) to load another", victim.name)
            self.evictions += 1
            await self.unregister(victim.name, forget=False)  # loaded again on demand, adapters too

    async def unregister(self, name: str, forget: bool = True) -> None:
        """Unload ``name``; with ``forget`` its persisted adapters go too (saved first: a 507
        leaves the model registered), so a new model of that name starts without them."""
        model = self.get(name)
        if forget and name in self._saved["models"]:
            saved = copy.deepcopy(self._saved)
            del saved["models"][name]
            self._save(saved)
        self.models.pop(name, None)
        await model.unload()
        await asyncio.to_thread(shutil.rmtree, model.scratch_dir, True)  # its adapters' copies
        await self.prune_model_copies()

    async def prune_model_copies(self) -> None:
        """Remove unpacked model archives no served model lives in (two models may share one
        copy): after a model goes, and after a registration that failed. Under the register
        lock, so no registration is between unpacking and recording."""
        async with self._lock:
            in_use = [model.model_dir for model in self.models.values()]
            await asyncio.to_thread(prune_extractions, self.scratch_dir, in_use)

    async def prune_downloads(self) -> None:
        """Remove the kept http(s) archives no registered adapter names any more. Every model's
        adapter lock is held (in name order), so no registration is between fetching and
        unpacking one. (Without a state file, archives are kept per model directory: not pruned.)"""
        if self.config.state_file is None:
            return
        models = sorted(self.models.values(), key=lambda m: m.name)
        async with contextlib.AsyncExitStack() as stack:
            for model in models:
                await stack.enter_async_context(model.adapter_lock)
            srcs = [record.src for model in models for record in model.registry.records()]
            downloads = self.scratch_dir.parent / "downloads"
            await asyncio.to_thread(prune_downloads, downloads, srcs)

    async def _restore_adapters(self, model: ModelService) -> None:
        """Start-up ``adapters/`` folders, then the adapters persisted by earlier runs."""
        if not lora_enabled(model.config.options, model.uses_builtin_engine):
            return  # DJL registers a model's adapters only with option.enable_lora=true
        saved = self._saved["models"].get(model.name, {})
        removed = removed_startup(saved)
        for name, path in startup_adapter_dirs(model.model_dir).items():
            if name not in removed:
                await self._restore_one(model, name, str(path), origin=AdapterOrigin.STARTUP)
        for record in saved_records(saved):  # ``src`` is resolved again: the roots may have changed
            if record.name not in model.registry:
                await self._restore_one(
                    model, record.name, record.src, record.preload, record.pin, record.options, record.origin
                )

    async def _restore_one(
        self,
        model: ModelService,
        name: str,
        src: str,
        preload: bool = True,
        pin: bool = False,
        options: dict[str, str] | None = None,
        origin: AdapterOrigin = AdapterOrigin.API,
    ) -> None:
        try:  # one that cannot be loaded is kept, failed, so the next save keeps it too
            await model.register_adapter(name, src, preload, pin, options, origin=origin, keep_failed=True)
        except LoraserveError as exc:
            log.error("model %s: adapter %s could not be restored: %s", model.name, name, exc)

    def persist(self, model: ModelService, removed: AdapterRecord | None = None) -> None:
        """Durably save the adapters of ``model`` registered by the API or a resolver (and the
        start-up ones it deleted).

        Left out: adapters still registering (not acknowledged yet) and those being removed
        (``removing``). Raises ``InsufficientStorageError`` (507) if the save fails; the
        saved state then stays what is on disk, and the caller must undo its change.
        """
        leaving = dict(self._leaving.get(model.name, {}))
        if removed is not None:
            leaving[removed.name] = removed
        kept = [
            r
            for r in model.registry.records()
            if r.name not in leaving and r.state is not AdapterState.REGISTERING
        ]
        saved = copy.deepcopy(self._saved)
        entry = saved["models"].setdefault(model.name, {})
        entry["adapters"] = [entry_of(r) for r in kept if r.origin in _SAVED_ORIGINS]
        gone = removed_startup(entry)
        gone |= {r.name for r in leaving.values() if r.origin is AdapterOrigin.STARTUP}
        gone -= {r.name for r in kept}
        entry["removed_startup"] = sorted(gone)
        self._save(saved)

    def _save(self, saved: dict[str, Any]) -> None:
        self.state.save(saved)  # raises before ``_saved`` changes: it stays what is on disk
        self._saved = saved

    def removing(self, model: ModelService, record: AdapterRecord) -> None:
        """Leave ``record`` out of every save from now on (it is being removed)."""
        self._leaving.setdefault(model.name, {})[record.name] = record

    def kept(self, model: ModelService, name: str) -> None:
        """``name`` is no longer being removed: removed for good, or still registered."""
        self._leaving.get(model.name, {}).pop(name, None)

    def ready(self) -> bool:
        return all(m.status.value == "READY" for m in self.models.values())

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*(m.unload() for m in self.models.values()), return_exceptions=True)


def _chained(manager: ModelManager, previous: object):
    def on_signal(signum: int, frame: object) -> None:
        manager.stopping = True
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:  # nobody else handles it: do what it would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    on_signal.loraserve_watch = True  # type: ignore[attr-defined]
    return on_signal
