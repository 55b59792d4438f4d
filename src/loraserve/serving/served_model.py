"""What the routes drive, declared once (vLLM's ``EngineClient`` is the pattern): a model served
by this process (``ModelService``) and one served by Ray replicas (``RayModel``) both implement
``ServedModel``, so a route never asks which one it has."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from loraserve.adapters.registry import AdapterOrigin, AdapterRecord, AdapterRegistry
from loraserve.serving.worker_process import WorkerReply


class InferObserver(Protocol):
    """Watches every inference call of a model — routes, workflows, whatever the path — around
    the call itself (LitServe's callbacks are the pattern): the request metrics and log."""

    async def observe(self, model: str, adapter: str, call: Awaitable[WorkerReply]) -> WorkerReply: ...


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
