"""OpenAI-compatible API (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) for
models served by the built-in engine: a protocol "spec" that turns an OpenAI request into one
LMI request for the model's worker and its answer back, with SSE streaming. As in vLLM,
``model`` names the base model or any of its adapters."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from loraserve.api.deps import config_of, manager_of
from loraserve.api.request_input import parse_json_body, read_body
from loraserve.errors import BadRequestError, LoraserveError, ModelNotFoundError
from loraserve.serving.model_service import ModelService
from loraserve.serving.worker_process import WorkerReply

router = APIRouter(prefix="/v1")
FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def openai_error(exc: LoraserveError) -> JSONResponse:
    body = {"error": {"message": exc.message, "type": exc.error_type, "code": exc.status_code}}
    return JSONResponse(body, status_code=exc.status_code)


def resolve(request: Request, name: Any) -> tuple[ModelService, str | None]:
    """``model`` → (served model, adapter or None)."""
    if not isinstance(name, str) or not name:
        raise BadRequestError('"model" is required')
    engines = [m for m in manager_of(request).models.values() if m.uses_builtin_engine]
    for model in engines:
        if model.name == name:
            return model, None
    for model in engines:
        if name in model.registry:
            return model, name
    raise ModelNotFoundError(f"model {name} not found; GET /v1/models lists the served ones")


@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    data = []
    for model in manager_of(request).models.values():
        if not model.uses_builtin_engine:
            continue
        created = int(model.created)
        data.append({"id": model.name, "object": "model", "created": created, "owned_by": "loraserve"})
        data += [{"id": a.name, "object": "model", "created": int(a.registered_at),
                  "owned_by": "loraserve", "parent": model.name, "root": model.name}
                 for a in model.registry.ready_records()]
    return JSONResponse({"object": "list", "data": data})


def lmi_parameters(body: dict) -> dict[str, Any]:
    """OpenAI sampling fields → LMI parameters (OpenAI's default temperature is 1)."""
    if body.get("n", 1) != 1:
        raise BadRequestError("only n=1 is supported")
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature
    params: dict[str, Any] = {
        "max_new_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 16,
        "do_sample": temperature > 0, "temperature": temperature, "details": True,
    }
    for key in ("top_p", "seed", "top_k", "repetition_penalty", "ignore_eos"):
        if body.get(key) is not None:
            params[key] = body[key]
    if body.get("stop"):
        params["stop_sequences"] = body["stop"]
    return params


async def _call(request: Request, model: ModelService, lmi: dict) -> WorkerReply:
    wire = {"properties": {"content-type": "application/json"},
            "content": [("data", json.dumps(lmi).encode())]}
    reply = await request.app.state.metrics.infer(model, lmi.get("adapters") or "", wire)
    output = reply.output
    if output is not None and output["code"] >= 400:
        detail = b"".join(v for _, v in output["content"]).decode("utf-8", "replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise LoraserveError(detail, status_code=output["code"])
    return reply


def _usage(details: dict) -> dict[str, int]:
    prompt, completion = details.get("prompt_tokens", 0), details.get("generated_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _openai(request: Request, chat: bool) -> Response:
    body = parse_json_body(await read_body(request, config_of(request).max_request_bytes),
                           "application/json")
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    model, adapter = resolve(request, body.get("model"))
    lmi: dict[str, Any] = {"parameters": lmi_parameters(body), "adapters": adapter or ""}
    if chat:
        if not isinstance(body.get("messages"), list):
            raise BadRequestError('"messages" must be a list')
        lmi["messages"] = body["messages"]
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequestError('"prompt" must be a string')
        lmi["inputs"] = prompt
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": body["model"]}
    if body.get("stream"):
        reply = await _call(request, model, {**lmi, "stream": True})
        return StreamingResponse(_sse(reply, meta, chat), media_type="text/event-stream")
    answer = json.loads((await _call(request, model, lmi)).output["content"][0][1])  # type: ignore[index]
    if chat:
        return JSONResponse({**answer, **meta, "object": "chat.completion"})
    details = answer.get("details", {})
    choice = {"index": 0, "text": answer["generated_text"], "logprobs": None,
              "finish_reason": FINISH.get(details.get("finish_reason"), "stop")}
    return JSONResponse({**meta, "object": "text_completion", "choices": [choice], "usage": _usage(details)})


async def _sse(reply: WorkerReply, meta: dict, chat: bool) -> AsyncIterator[bytes]:
    """LMI JSON lines → OpenAI server-sent events, ending with ``data: [DONE]``."""
    assert reply.stream is not None
    kind = "chat.completion.chunk" if chat else "text_completion"
    buffer = b""
    first = True
    while (item := await reply.stream.get()) is not None:
        if isinstance(item, Exception):
            yield f"data: {json.dumps({'error': {'message': str(item)}})}\n\n".encode()
            return
        buffer += item
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield _chunk(json.loads(line), meta, kind, chat, first)
                first = False
    yield b"data: [DONE]\n\n"


def _chunk(line: dict, meta: dict, kind: str, chat: bool, first: bool) -> bytes:
    text = line["token"]["text"]
    finish = None
    if line.get("generated_text") is not None:
        finish = "length" if line.get("details", {}).get("finish_reason") == "length" else "stop"
    if chat:
        delta: dict[str, str] = {"content": text}
        if first:
            delta["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n".encode()


async def _respond(request: Request, chat: bool) -> Response:
    """Errors in OpenAI's shape, not DJL's, on these routes."""
    try:
        return await _openai(request, chat)
    except LoraserveError as exc:
        return openai_error(exc)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _respond(request, chat=False)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _respond(request, chat=True)
