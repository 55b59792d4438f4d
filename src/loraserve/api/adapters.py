"""Adapter management routes: ``/models/{m}/adapters…`` and the single-model ``/adapters…``.

Options are query parameters (DJL) or JSON body fields (the query wins); every option that is
not one of DJL's own goes to the handler as is. Every change goes through the manager's
``adapters`` (``serving.adapter_admin``), which makes it durable and removes unused copies.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loraserve.api.deps import adapter_residency, config_of, manager_of
from loraserve.api.management import Page
from loraserve.api.params import Flag, merged_params, opt_bool, paged_response
from loraserve.errors import BadRequestError
from loraserve.serving.lora_gate import require_lora
from loraserve.serving.model_service import ModelService

log = logging.getLogger("loraserve.adapters")
router = APIRouter(tags=["adapters"])
RESERVED = {"name", "src", "preload", "pin"}


class AdapterUpdate(BaseModel):
    """Adapter options; any other field is passed to the handler's register hook as is."""

    model_config = ConfigDict(extra="allow")
    src: str | None = Field(
        None, description="adapter directory, file:// URL or archive, inside the allowed adapter roots"
    )
    preload: Flag = Field(None, description="load the weights now (default true)")
    pin: Flag = Field(None, description="keep it resident; implies preload")


class AdapterRegistration(AdapterUpdate):
    name: str | None = Field(None, description="1-128 letters, digits, '.', '_' or '-' (required)")


Registration = Annotated[AdapterRegistration, Query()]
RegistrationBody = Annotated[AdapterRegistration | None, Body()]
Update = Annotated[AdapterUpdate, Query()]
UpdateBody = Annotated[AdapterUpdate | None, Body()]


def adapter_model(request: Request, model_name: str | None) -> ModelService:
    """The model named (or the only one), refused unless it serves adapters."""
    manager = manager_of(request)
    model = manager.get(model_name) if model_name else manager.single_model()
    require_lora(model.name, model.config.options, model.uses_builtin_engine)
    return model


def _extras(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k not in RESERVED}


async def _params(request: Request) -> dict[str, str]:
    return await merged_params(request, config_of(request).max_json_depth)


def _status(model: ModelService, adapter: str, default: str) -> JSONResponse:
    """DJL answers with the message the handler set on its Output; ours when it set none."""
    return JSONResponse({"status": model.handler_messages.pop(adapter, None) or default})


async def _register(request: Request, model_name: str | None) -> JSONResponse:
    model = adapter_model(request, model_name)
    params = await _params(request)
    name, src = params.get("name"), params.get("src")
    if not src:
        raise BadRequestError("parameter src is required")
    pin = opt_bool(params, "pin", False)
    preload = True if pin else opt_bool(params, "preload", True)  # pinning implies preloading
    await manager_of(request).adapters.register(
        model, name or "", src, bool(preload), bool(pin), _extras(params)
    )
    return _status(model, name or "", f"Adapter {name} registered")


async def _update(request: Request, model_name: str | None, adapter: str) -> JSONResponse:
    model = adapter_model(request, model_name)
    params = await _params(request)
    await manager_of(request).adapters.update(
        model,
        adapter,
        params.get("src"),
        opt_bool(params, "preload", None),
        opt_bool(params, "pin", None),
        _extras(params),
    )
    return _status(model, adapter, f"Adapter {adapter} updated")


async def _unregister(request: Request, model_name: str | None, adapter: str) -> JSONResponse:
    model = adapter_model(request, model_name)
    await manager_of(request).adapters.unregister(model, adapter)
    return _status(model, adapter, f"Adapter {adapter} unregistered")


def _described(description: dict, residency: dict | None) -> dict:
    """DJL's object, plus (built-in engine) the adapter's ``residency`` and, as before it, its
    ``tier`` and ``memory_bytes`` at the top."""
    if residency is None:
        return description
    return description | {
        "tier": residency["tier"],
        "memory_bytes": residency["memory_bytes"],
        "residency": residency,
    }


async def _describe(request: Request, model_name: str | None, adapter: str) -> JSONResponse:
    model = adapter_model(request, model_name)
    description = model.registry.get(adapter).describe()
    residency = (await adapter_residency(request, model)).get(adapter)
    return JSONResponse(_described(description, residency))


async def _list(request: Request, model_name: str | None) -> JSONResponse:
    model = adapter_model(request, model_name)
    residency = await adapter_residency(request, model)
    records = [_described(r.describe(), residency.get(r.name)) for r in model.registry.records()]
    return paged_response(request, "adapters", records)


@router.get("/models/{model_name}/adapters")
async def list_model_adapters(request: Request, model_name: str, _page: Annotated[Page, Query()]):
    return await _list(request, model_name)


@router.get("/adapters")
async def list_adapters(request: Request, _page: Annotated[Page, Query()]):
    return await _list(request, None)


@router.post("/models/{model_name}/adapters")
async def register_model_adapter(
    request: Request, model_name: str, _query: Registration, _body: RegistrationBody = None
):
    return await _register(request, model_name)


@router.post("/adapters")
async def register_adapter(request: Request, _query: Registration, _body: RegistrationBody = None):
    return await _register(request, None)


@router.get("/models/{model_name}/adapters/{adapter}")
async def describe_model_adapter(request: Request, model_name: str, adapter: str):
    return await _describe(request, model_name, adapter)


@router.get("/adapters/{adapter}")
async def describe_adapter(request: Request, adapter: str):
    return await _describe(request, None, adapter)


@router.delete("/models/{model_name}/adapters/{adapter}")
async def unregister_model_adapter(request: Request, model_name: str, adapter: str):
    return await _unregister(request, model_name, adapter)


@router.delete("/adapters/{adapter}")
async def unregister_adapter(request: Request, adapter: str):
    return await _unregister(request, None, adapter)


@router.post("/models/{model_name}/adapters/{adapter}/update")
async def update_model_adapter(
    request: Request, model_name: str, adapter: str, _query: Update, _body: UpdateBody = None
):
    return await _update(request, model_name, adapter)


@router.post("/adapters/{adapter}/update")
async def update_adapter(request: Request, adapter: str, _query: Update, _body: UpdateBody = None):
    return await _update(request, None, adapter)
