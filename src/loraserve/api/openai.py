"""OpenAI-compatible routes (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) for
models served by the built-in engine. The OpenAI spec (``specs/openai.py``) parses the request
once into a typed ``GenerateRequest`` and shapes the answer, SSE chunks included. As in vLLM,
``model`` names the base model or any of its adapters; as in SGLang and Ray Serve LLM, it may
also be ``<base>:<adapter>``."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from loraserve.api.deps import adapter_residency, config_of, engine_models
from loraserve.api.generation import generate, resolve_adapters, tokens
from loraserve.api.request_input import parse_json_body, read_body
from loraserve.api.responses import CancellingStreamingResponse
from loraserve.errors import BadRequestError, LoraserveError, ModelNotFoundError
from loraserve.serving.model_service import ModelService
from loraserve.serving.worker_process import WorkerReply
from loraserve.specs import openai as spec
from loraserve.specs.base import openapi_body, parse
from loraserve.wire.messages import GenerateRequest

router = APIRouter(prefix="/v1")
Kind = type[spec.CompletionRequest | spec.ChatCompletionRequest]


def resolve(request: Request, name: str) -> tuple[ModelService, str | None]:
    """``model`` → (served model, adapter or None). An exact model or adapter name wins;
    otherwise ``<base>:<adapter>`` is split at its first ':' (as SGLang and Ray Serve LLM do).
    Names are ``[A-Za-z0-9._-]``, so no name holds a ':' and the split is never ambiguous.
    A bare adapter name registered on several models is refused (400): picking one would
    silently answer from a model the client may not have meant."""
    engines = engine_models(request)
    for model in engines:
        if model.name == name:
            return model, None
    owners = [model for model in engines if name in model.registry]
    if len(owners) > 1:
        bases = ", ".join(m.name for m in owners)
        raise BadRequestError(
            f"adapter {name} is registered on several models ({bases}); name one as "
            f"<base>:<adapter>, e.g. {owners[0].name}:{name}"
        )
    if owners:
        return owners[0], name
    base, colon, adapter = name.partition(":")
    if colon:
        return _base_adapter(engines, base, adapter)
    raise ModelNotFoundError(f"model {name} not found; GET /v1/models lists the served ones")


async def resolve_or_fetch(request: Request, name: str) -> tuple[ModelService, str | None]:
    """``resolve``; a name no model serves yet is looked up by the resolvers first: as
    ``<base>:<adapter>`` under that base's roots, a bare name under the roots of the one model
    that has resolvers (with several, the client must name the base)."""
    try:
        return resolve(request, name)
    except ModelNotFoundError:
        base, colon, adapter = name.partition(":")
        candidates = [m for m in engine_models(request) if m.resolver_roots]
        if colon:
            candidates = [m for m in candidates if m.name == base]
        if len(candidates) != 1:
            raise
        await resolve_adapters(request, candidates[0], [adapter if colon else name])
        return resolve(request, name)


def _base_adapter(engines: list[ModelService], base: str, adapter: str) -> tuple[ModelService, str]:
    model = next((m for m in engines if m.name == base), None)
    if model is None:
        raise ModelNotFoundError(
            f"model {base} (of {base}:{adapter}) not found; GET /v1/models lists the served ones"
        )
    if adapter not in model.registry:
        raise ModelNotFoundError(
            f"adapter {adapter} is not registered on model {base} "
            f"(of {base}:{adapter}); GET /v1/models lists the served ones"
        )
    return model, adapter


async def _entries(request: Request) -> list[dict[str, Any]]:
    """vLLM's model entries: each base model, then its ready adapters (``parent``: the base).
    An adapter name registered on several models is listed as ``<base>:<adapter>``, the id
    that ``resolve`` accepts for it; a bare name only where it is unique. An adapter's memory
    tier, loads and evictions are under ``loraserve_residency`` (OpenAI clients ignore it)."""
    data: list[dict[str, Any]] = []
    engines = engine_models(request)
    shared = _shared_adapter_names(engines)
    for model in engines:
        data.append(
            {"id": model.name, "object": "model", "created": int(model.created), "owned_by": "loraserve"}
        )
        residency = await adapter_residency(request, model)
        data += [
            {
                "id": f"{model.name}:{a.name}" if a.name in shared else a.name,
                "object": "model",
                "created": int(a.registered_at),
                "owned_by": "loraserve",
                "parent": model.name,
                "root": model.name,
            }
            | ({"loraserve_residency": residency[a.name]} if a.name in residency else {})
            for a in model.registry.ready_records()
        ]
    return data


def _shared_adapter_names(engines: list[ModelService]) -> set[str]:
    """Adapter names registered on more than one model (ambiguous without their base)."""
    seen: set[str] = set()
    shared: set[str] = set()
    for model in engines:
        for record in model.registry.records():
            (shared if record.name in seen else seen).add(record.name)
    return shared


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": await _entries(request)})


@router.get("/models/{model_id:path}")
async def describe_model(request: Request, model_id: str) -> JSONResponse:
    """One entry of ``/v1/models`` (ids may hold '/' or ':', hence the path converter)."""
    for entry in await _entries(request):
        if entry["id"] == model_id:
            return JSONResponse(entry)
    missing = ModelNotFoundError(f"model {model_id} not found; GET /v1/models lists the served ones")
    return JSONResponse(spec.error_json(missing), status_code=404)


async def _openai(request: Request, kind: Kind) -> Response:
    body = parse_json_body(await read_body(request, config_of(request).max_request_bytes), "application/json")
    parsed = parse(kind, body)
    chat = isinstance(parsed, spec.ChatCompletionRequest)
    model, adapter = await resolve_or_fetch(request, parsed.model)
    message = parsed.to_generate(adapter)
    meta = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": parsed.model,
    }
    reply = await generate(request, model, message)
    if message.stream:
        events = _sse(reply, meta, chat, message, parsed.include_usage)
        return CancellingStreamingResponse(events, reply, media_type="text/event-stream")
    return JSONResponse(spec.response_json(reply.output, meta, chat, message))


async def _sse(
    reply: WorkerReply, meta: dict[str, Any], chat: bool, message: GenerateRequest, include_usage: bool
) -> AsyncIterator[bytes]:
    """One event per token (``index`` tells the choices apart), the usage chunk when asked,
    then ``data: [DONE]``; a failure mid-stream is an error event."""
    started: set[int] = set()
    offsets: dict[int, int] = {}  # characters of each choice's text so far (legacy text_offset)
    prompt = completion = 0
    async for item in tokens(reply):
        if isinstance(item, Exception):
            yield spec.sse({"error": {"message": str(item)}})
            return
        yield spec.chunk_event(
            item, meta, chat, item.index not in started, message, offsets.get(item.index, 0)
        )
        started.add(item.index)
        offsets[item.index] = offsets.get(item.index, 0) + len(item.text)
        if item.summary is not None:
            completion += item.summary.generated_tokens
            prompt += item.summary.prompt_tokens if item.index % message.n == 0 else 0
    if include_usage:
        yield spec.usage_event(meta, chat, prompt, completion)
    yield spec.DONE


async def _respond(request: Request, kind: Kind) -> Response:
    """Errors in OpenAI's shape, not DJL's, on these routes."""
    try:
        return await _openai(request, kind)
    except LoraserveError as exc:
        return JSONResponse(spec.error_json(exc), status_code=exc.status_code)


@router.post("/completions", openapi_extra=openapi_body(spec.CompletionRequest, "an OpenAI completion"))
async def completions(request: Request) -> Response:
    return await _respond(request, spec.CompletionRequest)


@router.post(
    "/chat/completions", openapi_extra=openapi_body(spec.ChatCompletionRequest, "an OpenAI chat completion")
)
async def chat_completions(request: Request) -> Response:
    return await _respond(request, spec.ChatCompletionRequest)
