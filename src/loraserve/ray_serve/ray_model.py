"""The served model as loraserve's routes see it (the ``ModelService`` shape), backed by the
engine replicas of a Ray Serve deployment and the shared adapter registry.

So ``/invocations``, ``/predictions``, ``/v1/*`` and ``/models/{m}/adapters`` are loraserve's own
route code, unchanged; only "run this request" and "change the registry" differ: a request (the
typed ``GenerateRequest`` the routes parsed) goes to a replica picked by Ray with the adapter as
multiplexed model id, and a registration is
checked on one replica, then written to the shared store that every replica follows.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraserve.adapters import secure_mode
from loraserve.adapters.registry import (
    AdapterOrigin,
    AdapterRecord,
    AdapterRegistry,
    AdapterState,
    validate_adapter_name,
)
from loraserve.adapters.saved import entry_of, record_of
from loraserve.adapters.sources import resolve_source
from loraserve.errors import (
    AdapterNotFoundError,
    BadRequestError,
    ConflictError,
    LoraserveError,
    ModelNotFoundError,
)
from loraserve.ray_serve.adapter_store import AdapterRef, SharedAdapterStore
from loraserve.ray_serve.config import RayAppConfig
from loraserve.serving.adapter_admin import SharedStoreAdapters
from loraserve.serving.served_model import InferObserver
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.messages import GenerateRequest

if TYPE_CHECKING:  # the caller needs Ray; this module's parsing is tested without it
    from loraserve.ray_serve.routing import ReplicaCaller


def adapter_names(message: GenerateRequest) -> list[str]:
    """The distinct adapters a typed request asks for, in order (the base model is none)."""
    return message.adapter_names


class RayModel:
    uses_builtin_engine = True
    version = None

    def __init__(self, config: RayAppConfig, caller: ReplicaCaller) -> None:
        self.name = config.model_name
        self.config = config
        self.caller = caller
        self.store = SharedAdapterStore(config.loraserve_dir / "state.json", config.model_name)
        self.created = time.time()
        self.adapter_lock = asyncio.Lock()
        self._registry = AdapterRegistry()
        self.handler_messages: dict[str, str] = {}  # the routes' status texts (replicas set none)
        self.observer: InferObserver | None = None  # the ingress's request metrics and log
        self._generation = -1

    @property
    def registry(self) -> AdapterRegistry:
        """loraserve's registry type, rebuilt whenever any process changed the shared store."""
        entries = self.store.entries()
        if self.store.generation != self._generation:
            registry = AdapterRegistry()
            for entry in entries.values():
                registry.begin_register(record_of(entry))
                registry.finish_register(entry["name"])
            self._registry, self._generation = registry, self.store.generation
        return self._registry

    @property
    def scratch_dir(self) -> Path:
        """Where adapter archives are unpacked (the routes prune unused copies here)."""
        return self.config.loraserve_dir / "extracted" / self.name

    def _not_found(self, adapter: str) -> AdapterNotFoundError:
        """An inference call naming an unregistered adapter: DJL's 424, as ``loraserve serve``."""
        return AdapterNotFoundError(
            f"The adapter {adapter} has not been registered on model {self.name}; "
            f"register it with POST /models/{self.name}/adapters?name={adapter}&src=…",
            status_code=424,
        )

    def check_adapters(self, names: list[str], required: list[str] | None = None) -> None:
        for adapter in names if required is None else required:
            if adapter and adapter not in self.registry:
                raise self._not_found(adapter)

    async def infer(self, message: Any, fn: str = "handle", adapter: str = "") -> WorkerReply:
        """``ModelService.infer`` for the built-in engine's typed hook: ``generate`` with a
        ``GenerateRequest``, run on a replica picked with its adapter as multiplexed id."""
        call = self._infer(message, fn)
        return await (self.observer.observe(self.name, adapter, call) if self.observer else call)

    async def _infer(self, message: Any, fn: str) -> WorkerReply:
        if fn != "generate" or not isinstance(message, GenerateRequest):
            raise BadRequestError(
                f"handler function {fn} is not served on Ray; the engine replicas "
                "answer the built-in engine's typed generate call only"
            )
        names = adapter_names(message)
        refs = self.store.refs()  # one read: an adapter deleted since the route's check is a 424 here
        missing = next((n for n in names if n not in refs), None)
        if missing is not None:
            raise self._not_found(missing)
        return await self.caller.generate(message, [refs[n] for n in names])

    # -- the registry, shared by every replica ----------------------------------------------
    async def _resolve(self, src: str) -> str:
        path = await asyncio.to_thread(
            resolve_source,
            src,
            self.config.model_dir,
            self.config.adapter_roots(),
            self.scratch_dir,
            self.config.remote_access,
        )
        await asyncio.to_thread(secure_mode.check_adapter, path)
        if (path / "model.py").is_file():  # replicas do not run it: refused, never skipped
            raise BadRequestError(
                f"adapter source {src} carries a model.py (its own formatters); they run on "
                "`loraserve serve` only, not on the Ray replicas"
            )
        await self.caller.check_adapter(str(path))
        return str(path)

    async def register_adapter(
        self,
        name: str,
        src: str,
        preload: bool = True,
        pin: bool = False,
        options: dict[str, str] | None = None,
        origin: AdapterOrigin = AdapterOrigin.API,
    ) -> AdapterRecord:
        validate_adapter_name(name)
        async with self.adapter_lock:
            if name in self.registry:
                raise ConflictError(
                    f"adapter {name} is already registered on model {self.name}; "
                    "update it or unregister it first"
                )
            record = AdapterRecord(
                name=name,
                src=src,
                path=await self._resolve(src),
                preload=preload,
                pin=pin,
                options=dict(options or {}),
                origin=origin,
                state=AdapterState.READY,
            )
            await self._publish(record)
            return record

    async def update_adapter(
        self, name: str, src: str | None, preload: bool | None, pin: bool | None, options: dict[str, str]
    ) -> AdapterRecord:
        async with self.adapter_lock:
            old = self.registry.ready(name)
            path = old.path if src in (None, old.src) else await self._resolve(src)  # type: ignore[arg-type]
            record = AdapterRecord(
                name=name,
                src=src or old.src,
                path=path,
                preload=old.preload if preload is None else preload,
                pin=old.pin if pin is None else pin,
                options={**old.options, **options},
                origin=old.origin,
                state=AdapterState.READY,
                version=old.version + 1,
                registered_at=old.registered_at,
            )
            await self._publish(record)
            return record

    async def _publish(self, record: AdapterRecord) -> None:
        """Write the new revision, then have every live replica follow it (pinned: all hold
        it; an older revision: reloaded); ``preload`` holds it on one replica now, the others
        load it when traffic reaches them."""
        entry = await asyncio.to_thread(self.store.put, entry_of(record))
        await self.caller.broadcast("sync")
        if record.preload and not record.pin:
            await self.caller.preload(AdapterRef.of(entry))

    async def unregister_adapter(self, name: str) -> AdapterRecord:
        async with self.adapter_lock:
            record = self.registry.get(name)
            if await asyncio.to_thread(self.store.remove, name) is None:
                raise AdapterNotFoundError(f"adapter {name} not found")
            await self.caller.broadcast("sync")  # every live replica drops it before we answer
            return record

    async def register_startup_adapters(self, dirs: dict[str, Path]) -> list[str]:
        """``<model>/adapters/*`` once per state directory (unless deleted through the API)."""
        failed = []
        skip = {r.name for r in self.registry.records()}
        for name, path in dirs.items():
            if name in skip or name in self.store.removed_startup():
                continue
            try:
                await self.register_adapter(name, str(path), origin=AdapterOrigin.STARTUP)
            except LoraserveError:
                failed.append(name)
        return failed


class RayModelManager:
    """The ``ModelManager`` shape over one Ray-served model (routes look models up here)."""

    def __init__(self, model: RayModel) -> None:
        self.models = {model.name: model}
        self.config = model.config.server_config()
        self.adapters = SharedStoreAdapters()  # each change is written to the shared store as it is made

    def get(self, name: str) -> RayModel:
        if name not in self.models:
            raise ModelNotFoundError(
                f"model {name} not found; this Ray application serves {', '.join(self.models)}"
            )
        return self.models[name]

    async def get_or_load(self, name: str) -> RayModel:
        return self.get(name)

    def single_model(self) -> RayModel:
        return next(iter(self.models.values()))

    def ready(self) -> bool:
        return True
