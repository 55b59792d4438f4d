"""llama.cpp's ``/lora-adapters``: the adapters of the one built-in-engine model, listed as
llama.cpp lists its own. A management route: it shows paths on disk.

``scale`` is the scale an adapter applies at when a request names it without one: always 1.0,
the adapter as trained (its ``lora_alpha / r`` included). llama.cpp's ``POST /lora-adapters``
sets global scales that every later request inherits; loraserve scales adapters per request
instead (the ``lora`` field, ``[{"name": ..., "scale": ...}]``), so concurrent clients cannot
change each other's answers, and refuses that POST with a pointer to the per-request field."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from loraserve.api.deps import engine_model
from loraserve.errors import LoraserveError

router = APIRouter(tags=["adapters"])
ONE_MODEL = "llama.cpp's routes serve one model; use GET /models/{name}/adapters instead"
GLOBAL_SCALES = (
    "loraserve does not set global adapter scales: scale adapters per request "
    'with the "lora" field of /v1/completions or /v1/chat/completions, '
    '[{"name": "<adapter>", "scale": 0.5}] (GET /lora-adapters gives the names)'
)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    """llama.cpp's error shape."""
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status_code=status)


@router.get("/lora-adapters")
async def list_lora_adapters(request: Request) -> JSONResponse:
    """``[{"id", "path", "scale", "name"}]``: ids are positions in registration order."""
    try:
        model = engine_model(request, None, ONE_MODEL)
    except LoraserveError as exc:
        return _error(exc.status_code, exc.message, exc.error_type)
    return JSONResponse(
        [
            {"id": i, "path": record.path or record.src, "scale": 1.0, "name": record.name}
            for i, record in enumerate(model.registry.ready_records())
        ]
    )


@router.post("/lora-adapters")
async def set_lora_adapters(request: Request) -> JSONResponse:
    response = _error(405, GLOBAL_SCALES, "not_supported_error")
    response.headers["Allow"] = "GET"
    return response
