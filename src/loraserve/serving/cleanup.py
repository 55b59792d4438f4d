"""Remove unpacked archive copies that no registration uses any more: after an adapter is
unregistered or updated, after a model goes, and after a registration that failed."""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING

from loraserve.adapters.archives import prune_extractions

if TYPE_CHECKING:
    from loraserve.serving.model_manager import ModelManager
    from loraserve.serving.model_service import ModelService


async def prune_adapter_copies(model: ModelService) -> None:
    """Under the model's adapter lock, so no registration is between unpacking and recording."""
    async with model.adapter_lock:
        in_use = [record.path for record in model.registry.records()]
        await asyncio.to_thread(prune_extractions, model.scratch_dir, in_use)


async def prune_model_copies(manager: ModelManager) -> None:
    """Unpacked model archives no served model lives in (two models may share one copy)."""
    async with manager._lock:  # register unpacks and records a model under this lock
        in_use = [model.model_dir for model in manager.models.values()]
        await asyncio.to_thread(prune_extractions, manager.scratch_dir, in_use)


async def release_model_files(manager: ModelManager, model: ModelService) -> None:
    """After ``model`` was unregistered: its adapters' copies and its own unpacked archive."""
    await asyncio.to_thread(shutil.rmtree, model.scratch_dir, True)
    await prune_model_copies(manager)
