"""Remove a model's unpacked adapter archive copies that no registration uses any more: after
an adapter is unregistered or updated, and after a registration that failed. (Unpacked model
archives are pruned by ``ModelManager.prune_model_copies``.)"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from loraserve.adapters.archives import prune_extractions

if TYPE_CHECKING:
    from loraserve.serving.served_model import ServedModel


async def prune_adapter_copies(model: ServedModel) -> None:
    """Under the model's adapter lock, so no registration is between unpacking and recording."""
    async with model.adapter_lock:
        in_use = [record.path for record in model.registry.records()]
        await asyncio.to_thread(prune_extractions, model.scratch_dir, in_use)
