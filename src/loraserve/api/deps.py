"""Shared lookups for route modules: the model manager on ``app.state``, and the one model a
single-model protocol (TGI, LoRAX, vLLM, llama.cpp) means."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from loraserve.config import ServerConfig
from loraserve.errors import BadRequestError, ModelNotFoundError
from loraserve.serving.model_manager import ModelManager
from loraserve.serving.model_service import ModelService


def manager_of(request: Request) -> ModelManager:
    return request.app.state.manager


def config_of(request: Request) -> ServerConfig:
    return request.app.state.config


def engine_models(request: Request) -> list[ModelService]:
    return [m for m in manager_of(request).models.values() if m.uses_builtin_engine]


async def adapter_residency(request: Request, model: ModelService) -> dict[str, dict[str, Any]]:
    """Each adapter's residency (tier, loads, evictions: ``AdapterCache.residency``) as the
    model's engine reports it now; empty for a custom handler, a Ray-served model (its replicas'
    figures are summed) or a worker that cannot say: an addition, never a reason to fail."""
    if not model.uses_builtin_engine or not isinstance(model, ModelService):
        return {}
    stats = await request.app.state.metrics.fetch_engine_stats(model)
    return stats.get("adapter_residency", {})


def engine_model(request: Request, name: str | None = None, how: str = "") -> ModelService:
    """The built-in-engine model ``name``, or the only one when ``name`` is None. Those protocols
    serve one model; with several here, ``how`` tells the client how to name one."""
    models = engine_models(request)
    if name is not None:
        for model in models:
            if model.name == name:
                return model
        raise ModelNotFoundError(f"model {name} not found among the models on the built-in engine")
    if len(models) == 1:
        return models[0]
    if not models:
        raise ModelNotFoundError("no model on the built-in engine is loaded")
    names = ", ".join(sorted(m.name for m in models))
    raise BadRequestError(f"several models are served ({names}); {how or 'this route serves one'}")
