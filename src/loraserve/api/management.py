"""Model management routes, as DJL's management API has them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import PurePosixPath

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from loraserve.api.deps import manager_of
from loraserve.api.params import merged_params, opt_bool, opt_int, paged_response
from loraserve.errors import BadRequestError, ModelNotFoundError
from loraserve.serving.model_service import ModelService

router = APIRouter()
log = logging.getLogger("loraserve.api")
_background: set[asyncio.Task] = set()


def _default_name(url: str) -> str:
    name = PurePosixPath(url.rstrip("/")).name
    for suffix in (".tar.gz", ".tgz", ".zip"):
        name = name.removesuffix(suffix)
    return name


def scaled_status(name: str, min_workers: int, max_workers: int) -> str:
    """DJL's answer to a scale request."""
    return (f'Workflow "{name}" worker scaled. New Worker configuration min workers:{min_workers} '
            f"max workers:{max_workers}")


@router.post("/models")
async def register_model(request: Request) -> JSONResponse:
    params = await merged_params(request)
    url = params.get("url")
    if not url:
        raise BadRequestError("parameter url is required")
    name = params.get("model_name") or _default_name(url)
    overrides = {
        key: value for key, value in {
            "batch_size": opt_int(params, "batch_size", None, 1),
            "max_batch_delay_ms": opt_int(params, "max_batch_delay", None, 0),
            "job_queue_size": opt_int(params, "job_queue_size", None, 1),
            "min_workers": opt_int(params, "min_worker", None, 1),
            "max_workers": opt_int(params, "max_worker", None, 1),
        }.items() if value is not None
    }
    manager = manager_of(request)
    coro = manager.register(name, url, version=params.get("model_version"), overrides=overrides)
    if not opt_bool(params, "synchronous", True):
        task = asyncio.create_task(coro)
        _background.add(task)
        task.add_done_callback(_background.discard)
        return JSONResponse({"status": f'Model "{name}" registration scheduled.'}, status_code=202)
    await coro
    return JSONResponse({"status": f'Model "{name}" registered.'})


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
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
    return JSONResponse([{"workflowName": name, "version": model.version,
                          "models": [model.describe()]}])


@router.put("/models/{name}")
@router.put("/models/{name}/{version}")
async def scale_model(request: Request, name: str, version: str | None = None) -> JSONResponse:
    model = _model_version(request, name, version)
    params = dict(request.query_params)
    min_workers = opt_int(params, "min_worker", model.config.min_workers, 1)
    max_workers = opt_int(params, "max_worker", model.config.max_workers, 1)
    assert min_workers is not None and max_workers is not None
    if max_workers < min_workers:
        raise BadRequestError(f"max_worker ({max_workers}) is below min_worker ({min_workers})")
    await model.workers.scale(min_workers, max_workers)
    return JSONResponse({"status": scaled_status(name, min_workers, max_workers)})


@router.delete("/models/{name}")
@router.delete("/models/{name}/{version}")
async def unregister_model(request: Request, name: str, version: str | None = None) -> JSONResponse:
    _model_version(request, name, version)
    await manager_of(request).unregister(name)
    return JSONResponse({"status": f'Model or workflow "{name}" unregistered'})  # DJL's text
