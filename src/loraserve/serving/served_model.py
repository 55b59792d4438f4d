"""What the routes drive, declared once (vLLM's ``EngineClient`` is the pattern): a model served
by this process (``ModelService``) and one served by Ray replicas (``RayModel``) both implement
``ServedModel``, so a route never asks which one it has."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from loraserve.adapters.registry import AdapterOrigin, AdapterRecord, AdapterRegistry, AdapterState
from loraserve.serving.worker_process import WorkerReply


class InferObserver(Protocol):
    """Watches every inference call of a model — routes, workflows, whatever the path — around
    the call itself (LitServe's callbacks are the pattern): the request metrics and log; and
    every adapter registration and update (their latency)."""

    async def observe(self, model: str, adapter: str, call: Awaitable[WorkerReply]) -> WorkerReply: ...

    def adapter_loaded(self, model: str, src: str, seconds: float) -> None: ...


class _Observed(Protocol):
    name: str
    observer: InferObserver | None


M = TypeVar("M", bound=_Observed)
P = ParamSpec("P")
AdapterCall = Callable[Concatenate[M, P], Coroutine[Any, Any, AdapterRecord]]


def timed_adapter_load(method: AdapterCall[M, P]) -> AdapterCall[M, P]:
    """A registration's latency for the observer: ``method``'s whole call (waiting for the
    model's adapter lock, fetching and unpacking, every worker's load), once it has succeeded."""

    @functools.wraps(method)
    async def timed(self: M, *args: P.args, **kwargs: P.kwargs) -> AdapterRecord:
        started = time.perf_counter()
        record = await method(self, *args, **kwargs)
        if self.observer is not None and record.state is not AdapterState.FAILED:  # kept as failed
            self.observer.adapter_loaded(self.name, record.src, time.perf_counter() - started)
        return record

    return timed


class ServedModel(Protocol):
    name: str
    observer: InferObserver | None
    handler_messages: dict[str, str]  # adapter → its handler's last status text (DJL answers it)
    adapter_lock: asyncio.Lock  # held while an adapter is between unpacking and being recorded

    @property
    def registry(self) -> AdapterRegistry: ...

    @property
    def scratch_dir(self) -> Path:
        """Where this model's adapter archives are unpacked."""
        ...

    @property
    def uses_builtin_engine(self) -> bool: ...

    def check_adapters(self, names: list[str], required: list[str] | None = None) -> None: ...

    async def infer(self, message: Any, fn: str = "handle", adapter: str = "") -> WorkerReply:
        """Run ``fn`` with ``message``; ``adapter`` labels the call for the observer."""
        ...

    async def register_adapter(
        self,
        name: str,
        src: str,
        preload: bool = True,
        pin: bool = False,
        options: dict[str, str] | None = None,
        origin: AdapterOrigin = AdapterOrigin.API,
    ) -> AdapterRecord: ...

    async def update_adapter(
        self, name: str, src: str | None, preload: bool | None, pin: bool | None, options: dict[str, str]
    ) -> AdapterRecord: ...

    async def unregister_adapter(self, name: str) -> AdapterRecord: ...
