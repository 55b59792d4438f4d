"""Adapter management routes: ``/models/{m}/adapters…`` and the single-model ``/adapters…``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from loraserve.api.deps import manager_of
from loraserve.api.params import merged_params, opt_bool, paged_response
from loraserve.errors import BadRequestError
from loraserve.serving.lora_gate import require_lora
from loraserve.serving.model_service import ModelService

router = APIRouter()
RESERVED = {"name", "src", "preload", "pin"}


def _model(request: Request, model_name: str | None) -> ModelService:
    manager = manager_of(request)
    model = manager.get(model_name) if model_name else manager.single_model()
    require_lora(model.name, model.config.options, model.uses_builtin_engine)
    return model


def _extras(params: dict[str, str]) -> dict[str, str]:
    """Every option that is not one of DJL's own goes to the handler as is."""
    return {k: v for k, v in params.items() if k not in RESERVED}


def _status(model: ModelService, adapter: str, default: str) -> JSONResponse:
    """DJL answers with the message the handler set on its Output; ours when it set none."""
    return JSONResponse({"status": model.handler_messages.pop(adapter, None) or default})


async def _register(request: Request, model_name: str | None) -> JSONResponse:
    model = _model(request, model_name)
    params = await merged_params(request)
    name, src = params.get("name"), params.get("src")
    if not src:
        raise BadRequestError("parameter src is required")
    pin = opt_bool(params, "pin", False)
    preload = True if pin else opt_bool(params, "preload", True)  # pinning implies preloading
    await model.register_adapter(name or "", src, bool(preload), bool(pin), _extras(params))
    manager_of(request).persist(model)
    return _status(model, name or "", f"Adapter {name} registered")


async def _update(request: Request, model_name: str | None, adapter: str) -> JSONResponse:
    model = _model(request, model_name)
    params = await merged_params(request)
    await model.update_adapter(adapter, params.get("src"), opt_bool(params, "preload", None),
                               opt_bool(params, "pin", None), _extras(params))
    manager_of(request).persist(model)
    return _status(model, adapter, f"Adapter {adapter} updated")


async def _describe(request: Request, model_name: str | None, adapter: str) -> JSONResponse:
    return JSONResponse(_model(request, model_name).registry.get(adapter).describe())  # DJL: an object


async def _unregister(request: Request, model_name: str | None, adapter: str) -> JSONResponse:
    model = _model(request, model_name)
    record = await model.unregister_adapter(adapter)
    manager_of(request).persist(model, removed=record)
    return _status(model, adapter, f"Adapter {adapter} unregistered")


async def _list(request: Request, model_name: str | None) -> JSONResponse:
    records = [r.describe() for r in _model(request, model_name).registry.records()]
    return paged_response(request, "adapters", records)


def _add_routes(prefix: str, with_model: bool) -> None:
    """The same handlers under ``/models/{model_name}/adapters`` and ``/adapters``."""

    def bind(handler, *names: str):
        async def route(request: Request) -> JSONResponse:
            values = [request.path_params.get(n) for n in names]
            model_name = request.path_params.get("model_name") if with_model else None
            return await handler(request, model_name, *values)
        return route

    router.add_api_route(prefix, bind(_list), methods=["GET"])
    router.add_api_route(prefix, bind(_register), methods=["POST"])
    router.add_api_route(prefix + "/{adapter}", bind(_describe, "adapter"), methods=["GET"])
    router.add_api_route(prefix + "/{adapter}", bind(_unregister, "adapter"), methods=["DELETE"])
    router.add_api_route(prefix + "/{adapter}/update", bind(_update, "adapter"), methods=["POST"])


_add_routes("/models/{model_name}/adapters", with_model=True)
_add_routes("/adapters", with_model=False)
