"""Model management routes, as DJL's management API has them (options as query parameters;
SageMaker's multi-model endpoints send the same fields as a JSON body)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loraserve.adapters.archives import ARCHIVE_SUFFIXES
from loraserve.api.deps import config_of, manager_of
from loraserve.api.params import Flag, Limit, PageToken, Workers, check_worker_counts, paged_response
from loraserve.errors import BadRequestError, ModelNotFoundError
from loraserve.model_store import ensure_model_url_allowed
from loraserve.names import validate_model_name
from loraserve.serving.model_manager import ModelManager
from loraserve.serving.model_service import ModelService

router = APIRouter(tags=["models"])
log = logging.getLogger("loraserve.api")
_background: set[asyncio.Task] = set()


class ModelRegistration(BaseModel):
    """Where a model comes from and how it is served."""

    model_config = ConfigDict(extra="ignore")
    url: str | None = Field(
        None, description="model directory, file:// URL or archive, inside the allowed model roots (required)"
    )
    model_name: str | None = Field(None, description="default: the URL's last segment")
    model_version: str | None = None
    batch_size: Annotated[int | None, Field(ge=1)] = None
    max_batch_delay: Annotated[int | None, Field(ge=0, description="milliseconds")] = None
    job_queue_size: Annotated[int | None, Field(ge=1)] = None
    min_worker: Workers = None
    max_worker: Workers = None
    synchronous: Flag = Field(None, description="wait for the model to load (default true)")


class WorkerScale(BaseModel):
    min_worker: Workers = None
    max_worker: Workers = None


class Page(BaseModel):
    limit: Limit = None
    next_page_token: PageToken = None


def _default_name(url: str) -> str:
    name = PurePosixPath(url.rstrip("/")).name
    for suffix in ARCHIVE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def scaled_status(name: str, min_workers: int, max_workers: int) -> str:
    """DJL's answer to a scale request."""
    return (
        f'Workflow "{name}" worker scaled. New Worker configuration min workers:{min_workers} '
        f"max workers:{max_workers}"
    )


async def _register(
    manager: ModelManager, name: str, url: str, version: str | None, overrides: dict[str, int]
) -> None:
    """Register; on failure remove whatever archive copy the attempt unpacked."""
    try:
        await manager.register(name, url, version=version, overrides=overrides)
    except BaseException:
        await manager.prune_model_copies()
        raise


@router.post("/models")
async def register_model(
    request: Request,
    query: Annotated[ModelRegistration, Query()],
    body: Annotated[ModelRegistration | None, Body()] = None,
) -> JSONResponse:
    """Register a model; ``url`` must lie inside the allowed model roots."""
    fields = {**(body.model_dump(exclude_none=True) if body else {}), **query.model_dump(exclude_none=True)}
    params = ModelRegistration(**fields)
    if not params.url:
        raise BadRequestError("parameter url is required")
    config, manager = config_of(request), manager_of(request)
    name = validate_model_name(params.model_name or _default_name(params.url))
    ensure_model_url_allowed(params.url, config.model_store, config.model_roots)
    check_worker_counts(config, params.min_worker, params.max_worker)
    overrides = {
        key: value
        for key, value in {
            "batch_size": params.batch_size,
            "max_batch_delay_ms": params.max_batch_delay,
            "job_queue_size": params.job_queue_size,
            "min_workers": params.min_worker,
            "max_workers": params.max_worker,
        }.items()
        if value is not None
    }
    coro = _register(manager, name, params.url, params.model_version, overrides)
    if params.synchronous is False:
        task = asyncio.create_task(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)
        return JSONResponse({"status": f'Model "{name}" registration scheduled.'}, status_code=202)
    await coro
    return JSONResponse({"status": f'Model "{name}" registered.'})


@router.get("/models")
async def list_models(request: Request, _page: Annotated[Page, Query()]) -> JSONResponse:
    models = [m.summary() for m in manager_of(request).models.values()]
    return paged_response(request, "models", models)


def _model_version(request: Request, name: str, version: str | None) -> ModelService:
    model = manager_of(request).get(name)
    if version is not None and model.version not in (None, version):
        raise ModelNotFoundError(f"model {name} version {version} not found")
    return model


@router.get("/models/{name}")
@router.get("/models/{name}/{version}")
async def describe_model(request: Request, name: str, version: str | None = None) -> JSONResponse:
    model = _model_version(request, name, version)
    return JSONResponse([{"workflowName": name, "version": model.version, "models": [model.describe()]}])


@router.put("/models/{name}")
@router.put("/models/{name}/{version}")
async def scale_model(
    request: Request, name: str, scale: Annotated[WorkerScale, Query()], version: str | None = None
) -> JSONResponse:
    """Scale the model's workers, within ``max_workers_per_model``."""
    model = _model_version(request, name, version)
    min_workers = scale.min_worker or model.config.min_workers
    max_workers = scale.max_worker or model.config.max_workers
    if max_workers < min_workers:
        raise BadRequestError(f"max_worker ({max_workers}) is below min_worker ({min_workers})")
    check_worker_counts(config_of(request), min_workers, max_workers)
    await model.workers.scale(min_workers, max_workers)
    return JSONResponse({"status": scaled_status(name, min_workers, max_workers)})


@router.delete("/models/{name}")
@router.delete("/models/{name}/{version}")
async def unregister_model(request: Request, name: str, version: str | None = None) -> JSONResponse:
    _model_version(request, name, version)
    await manager_of(request).unregister(name)
    return JSONResponse({"status": f'Model or workflow "{name}" unregistered'})  # DJL's text
