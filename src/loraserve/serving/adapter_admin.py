"""Adapter changes a client is told about, made durable: the one path every route (DJL's,
vLLM's, SageMaker's) and workflows take to register, update or unregister an adapter, so no
route persists or prunes by itself.

``DurableAdapters`` (``loraserve serve``) acknowledges a change only once ``state.json`` holds
it: a failed save (507) takes a registration back, puts an updated adapter's earlier version
back, and leaves an adapter whose removal could not be saved registered and served.
``SharedStoreAdapters`` (the Ray ingress) needs no second save: its model writes the shared
store as part of each change. Both remove unpacked archive copies nothing uses any more.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable
from typing import Protocol

from loraserve.adapters.registry import AdapterOrigin, AdapterRecord
from loraserve.errors import InsufficientStorageError, LoraserveError
from loraserve.serving.cleanup import prune_adapter_copies
from loraserve.serving.model_service import ModelService
from loraserve.serving.served_model import ServedModel

log = logging.getLogger("loraserve.adapters")


class Persistence(Protocol):
    """What ``ModelManager`` offers to save a model's registrations (see its ``persist``)."""

    def persist(self, model: ModelService, removed: AdapterRecord | None = None) -> None: ...

    def removing(self, model: ModelService, record: AdapterRecord) -> None: ...

    def kept(self, model: ModelService, name: str) -> None: ...

    async def prune_downloads(self) -> None: ...


class DurableAdapters:
    def __init__(self, state: Persistence) -> None:
        self.state = state

    async def register(
        self,
        model: ModelService,
        name: str,
        src: str,
        preload: bool,
        pin: bool,
        extras: dict[str, str],
        origin: AdapterOrigin = AdapterOrigin.API,
    ) -> None:
        try:
            await model.register_adapter(name, src, preload, pin, extras, origin=origin)
        except BaseException:
            await prune_adapter_copies(model)
            raise
        try:
            self.state.persist(model)
        except InsufficientStorageError:
            self.state.removing(model, model.registry.get(name))  # not saved by a concurrent save either
            try:
                await _quietly(model.unregister_adapter(name), f"taking back adapter {name}")
            finally:
                self.state.kept(model, name)
                await prune_adapter_copies(model)
            raise

    async def update(
        self,
        model: ModelService,
        name: str,
        src: str | None,
        preload: bool | None,
        pin: bool | None,
        extras: dict[str, str],
    ) -> None:
        before = dataclasses.replace(model.registry.get(name))
        try:
            await model.update_adapter(name, src, preload, pin, extras)
        finally:
            await prune_adapter_copies(model)  # the old version's copy, or the failed new one
            await self.state.prune_downloads()
        try:
            self.state.persist(model)
        except InsufficientStorageError:
            try:
                await _quietly(model.restore_adapter(before), f"restoring adapter {name}")
            finally:
                await prune_adapter_copies(model)
            raise

    async def unregister(self, model: ModelService, name: str) -> None:
        """Saved without the adapter first; if the removal itself then fails, it is saved back."""
        record = model.registry.settled(name)
        self.state.removing(model, record)
        try:
            self.state.persist(model)
            try:
                await model.unregister_adapter(name)
            except BaseException:
                self.state.kept(model, name)
                await _quietly(self._save(model), f"saving adapter {name} back")
                raise
        finally:
            self.state.kept(model, name)
        await prune_adapter_copies(model)
        await self.state.prune_downloads()

    async def _save(self, model: ModelService) -> None:
        self.state.persist(model)


class SharedStoreAdapters:
    async def register(
        self, model: ServedModel, name: str, src: str, preload: bool, pin: bool, extras: dict[str, str]
    ) -> None:
        try:
            await model.register_adapter(name, src, preload, pin, extras)
        finally:
            await prune_adapter_copies(model)

    async def update(
        self,
        model: ServedModel,
        name: str,
        src: str | None,
        preload: bool | None,
        pin: bool | None,
        extras: dict[str, str],
    ) -> None:
        try:
            await model.update_adapter(name, src, preload, pin, extras)
        finally:
            await prune_adapter_copies(model)

    async def unregister(self, model: ServedModel, name: str) -> None:
        await model.unregister_adapter(name)
        await prune_adapter_copies(model)


async def _quietly(step: Awaitable[object], what: str) -> None:
    """An undo step after a failure: its own failure is logged, the first error is reported."""
    try:
        await step
    except LoraserveError as exc:
        log.error("model: %s failed: %s", what, exc.message)
