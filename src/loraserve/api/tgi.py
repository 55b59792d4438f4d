"""TGI's and LoRAX's generation routes: ``POST /generate``, ``POST /generate_stream`` (SSE),
and ``POST /`` (TGI's route, which the ``text-generation`` and LoRAX clients call: ``stream``
picks the form; the answer is a one-element list). They serve the one built-in-engine model;
``parameters.adapter_id`` picks an adapter registered on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from loraserve.api.deps import config_of, engine_model
from loraserve.api.generation import generate, tokens
from loraserve.api.request_input import parse_json_body, read_body
from loraserve.api.responses import CancellingStreamingResponse
from loraserve.errors import AdapterNotFoundError, LoraserveError
from loraserve.serving.model_service import ModelService
from loraserve.serving.worker_process import WorkerReply
from loraserve.specs import tgi as spec
from loraserve.specs.base import openapi_body, parse
from loraserve.wire.messages import GenerateRequest

router = APIRouter(tags=["tgi"])
BODY = openapi_body(spec.TgiRequest, "TGI's / LoRAX's generate request")
ONE_MODEL = "TGI's routes serve one model; use /v1/completions with model=<base>:<adapter> instead"


def _require_registered(model: ModelService, names: list[str]) -> None:
    """An unknown adapter is a 404 here (TGI's not-found), before any work is queued."""
    for name in names:
        if name not in model.registry:
            raise AdapterNotFoundError(
                f"adapter {name} is not registered on model {model.name}; "
                "load it with POST /v1/load_lora_adapter or POST /adapters"
            )


async def _generate(request: Request, stream: bool | None) -> Response:
    """``stream`` None: TGI's ``/``, where the body's ``stream`` decides."""
    raw = await read_body(request, config_of(request).max_request_bytes)
    parsed = parse(spec.TgiRequest, parse_json_body(raw, "application/json"))
    streaming = parsed.stream if stream is None else stream
    message = parsed.to_generate(streaming)
    model = engine_model(request, None, ONE_MODEL)
    _require_registered(model, message.adapter_names)
    reply = await generate(request, model, message)
    if streaming:
        return CancellingStreamingResponse(
            _events(reply, parsed, message), reply, media_type="text/event-stream"
        )
    answer = spec.response_json(parsed, message, reply.output.sequences[0])
    return JSONResponse([answer] if stream is None else answer)


async def _events(
    reply: WorkerReply, parsed: spec.TgiRequest, message: GenerateRequest
) -> AsyncIterator[bytes]:
    index = 0
    async for item in tokens(reply):
        if isinstance(item, Exception):
            yield spec.stream_error(str(item))
            return
        index += 1
        yield spec.stream_event(parsed, message, item, index)


async def _respond(request: Request, stream: bool | None) -> Response:
    """Errors in TGI's shape on these routes."""
    try:
        return await _generate(request, stream)
    except LoraserveError as exc:
        return JSONResponse(spec.error_json(exc), status_code=exc.status_code)


@router.post("/generate", openapi_extra=BODY)
async def generate_text(request: Request) -> Response:
    return await _respond(request, False)


@router.post("/generate_stream", openapi_extra=BODY)
async def generate_stream(request: Request) -> Response:
    return await _respond(request, True)


@router.post("/", openapi_extra=BODY)
async def compat_generate(request: Request) -> Response:
    return await _respond(request, None)
