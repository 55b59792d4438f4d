"""vLLM's runtime adapter loading: ``POST /v1/load_lora_adapter`` and
``/v1/unload_lora_adapter``, onto the same registry, sandbox and persistence as the adapters
API (``api/adapters.py``), behind the management token (``api/security.py``)."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from loraserve.api.deps import config_of, engine_model, manager_of
from loraserve.api.request_input import parse_json_body, read_body
from loraserve.errors import AdapterNotFoundError, BadRequestError, LoraserveError
from loraserve.serving.lora_gate import require_lora
from loraserve.serving.model_service import ModelService
from loraserve.specs import vllm as spec
from loraserve.specs.base import openapi_body, parse

router = APIRouter(prefix="/v1", tags=["adapters"])
B = TypeVar("B", bound=BaseModel)


async def _body(request: Request, kind: type[B]) -> B:
    raw = await read_body(request, config_of(request).max_request_bytes)
    return parse(kind, parse_json_body(raw, "application/json"))


def _model(request: Request, name: str | None) -> ModelService:
    model = engine_model(request, name, 'name one with "model" in the body')
    require_lora(model.name, model.config.options, model.uses_builtin_engine)
    return model


async def _load(request: Request) -> Response:
    body = await _body(request, spec.LoadLoraAdapter)
    model = _model(request, body.model)
    name = body.lora_name
    if name in model.registry and body.load_inplace:
        await manager_of(request).adapters.update(model, name, body.lora_path, None, None, {})
    elif name in model.registry:
        raise BadRequestError(f"The lora adapter '{name}' has already been loaded.")
    else:
        await manager_of(request).adapters.register(model, name, body.lora_path, True, False, {})
    model.handler_messages.pop(name, None)  # vLLM answers with its own text
    return PlainTextResponse(spec.loaded(name))


async def _unload(request: Request) -> Response:
    body = await _body(request, spec.UnloadLoraAdapter)
    model = _model(request, body.model)
    if body.lora_name not in model.registry:
        raise AdapterNotFoundError(f"The lora adapter '{body.lora_name}' cannot be found.")
    await manager_of(request).adapters.unregister(model, body.lora_name)
    model.handler_messages.pop(body.lora_name, None)
    return PlainTextResponse(spec.removed(body.lora_name))


async def _vllm_errors(request: Request, route) -> Response:
    try:
        return await route(request)
    except LoraserveError as exc:
        return JSONResponse(spec.error_json(exc), status_code=exc.status_code)


@router.post("/load_lora_adapter", openapi_extra=openapi_body(spec.LoadLoraAdapter, "vLLM's adapter load"))
async def load_lora_adapter(request: Request) -> Response:
    """Register ``lora_path`` as ``lora_name`` (``load_inplace``: replace it if registered)."""
    return await _vllm_errors(request, _load)


@router.post(
    "/unload_lora_adapter", openapi_extra=openapi_body(spec.UnloadLoraAdapter, "vLLM's adapter unload")
)
async def unload_lora_adapter(request: Request) -> Response:
    return await _vllm_errors(request, _unload)
