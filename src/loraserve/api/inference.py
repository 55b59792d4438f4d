"""Inference routes: ``/ping``, ``/invocations`` (SageMaker), ``/predictions/{model}``, and
vLLM's ``/health``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loraserve.api.adapter_formatting import formatted_body, formatted_response, refuse_formatted_stream
from loraserve.api.deps import config_of, manager_of
from loraserve.api.generation import (
    cancel_on_disconnect,
    counted_refusals,
    generate,
    resolve_adapters,
    tokens,
)
from loraserve.api.request_input import (
    build_wire_input,
    content_adapter,
    fallback_adapter,
    override_adapter,
    parse_json_body,
    read_body,
    refuse_handler_override,
    requested_adapters,
)
from loraserve.api.responses import CancellingStreamingResponse, reply_to_response
from loraserve.errors import BadRequestError, ModelNotFoundError
from loraserve.model_store import archive_stem
from loraserve.serving.metrics import adapter_label
from loraserve.serving.model_service import ModelService
from loraserve.serving.worker_process import WorkerReply
from loraserve.specs import lmi
from loraserve.specs.base import openapi_body, parse

router = APIRouter()
TARGET_MODEL = "x-amzn-sagemaker-target-model"
LMI_BODY = openapi_body(
    lmi.LmiRequest,
    "LMI for models on the built-in engine (checked as declared); "
    "a custom model.py receives the body unchanged, whatever it is",
)


@router.get("/ping")
async def ping(request: Request) -> JSONResponse:
    """Healthy once start-up is done and every model is ready (SageMaker polls this)."""
    manager = manager_of(request)
    if _ready(request):
        return JSONResponse({"health": "healthy!"})
    statuses = {name: m.status.value for name, m in manager.models.items()}
    return JSONResponse(
        {"health": "unhealthy", "models": statuses, "reason": _not_ready_because(request)}, status_code=503
    )


@router.get("/health")
async def health(request: Request) -> Response:
    """vLLM's health check (what its clients and Kubernetes probes poll): the same readiness
    as ``/ping``, as a status code with an empty body."""
    return Response(status_code=200 if _ready(request) else 503)


def _not_ready_because(request: Request) -> str:
    """Why /ping is 503, in words: still starting, or which models are not ready and why."""
    if not request.app.state.started:
        return (
            "starting: models are loading (a first start also builds the native kernels and "
            "converts the model; the server log shows progress)"
        )
    waiting = {
        name: m.error or m.status.value
        for name, m in manager_of(request).models.items()
        if m.status.value != "READY"
    }
    return "; ".join(f"model {name}: {why}" for name, why in waiting.items())


def _ready(request: Request) -> bool:
    return request.app.state.started and manager_of(request).ready()


async def _predict(request: Request, model: ModelService) -> Response:
    refuse_handler_override(request)
    body = await read_body(request, config_of(request).max_request_bytes)
    if model.uses_builtin_engine:
        return await _predict_lmi(request, model, body)
    json_body = parse_json_body(body, request.headers.get("content-type"))
    adapters = requested_adapters(json_body, request)
    await resolve_adapters(request, model, content_adapter(request))
    model.check_adapters(adapters, required=content_adapter(request))  # DJL: ?adapter= must exist
    infer = model.infer(build_wire_input(request, body), "handle", adapter_label(model, adapters))
    return reply_to_response(await cancel_on_disconnect(request, infer))


async def _predict_lmi(request: Request, model: ModelService, body: bytes) -> Response:
    """The built-in engine: LMI parsed here, once; the worker gets a typed request."""
    with counted_refusals(request, model):
        unknown = sorted(set(request.query_params) - {"adapter"})
        if unknown:  # e.g. ?adapters=: answered by the base model, it would look like it worked
            raise BadRequestError(
                f"unknown query parameter(s) {', '.join(unknown)}: the built-in engine reads only "
                '?adapter= (several adapters go in the body\'s "adapters")'
            )
        json_body, formatting = await formatted_body(
            request, model, parse_json_body(body, "application/json")
        )
        parsed = parse(lmi.LmiRequest, json_body)
        message = lmi.to_generate(parsed, fallback_adapter(request), override_adapter(request))
        refuse_formatted_stream(formatting, message.stream)
    reply = await generate(request, model, message, formatted=True)
    if message.stream:
        return CancellingStreamingResponse(
            _lmi_lines(reply, message.details), reply, media_type="application/jsonlines"
        )
    result = reply.output
    headers = {
        "x-loraserve-peak-batch": str(result.peak_batch),
        "x-loraserve-generated-tokens": str(result.generated_tokens),
    }
    return await formatted_response(request, model, formatting, lmi.response_json(parsed, result), headers)


async def _lmi_lines(reply: WorkerReply, details: bool) -> AsyncIterator[bytes]:
    async for item in tokens(reply):
        yield lmi.error_line(str(item)) if isinstance(item, Exception) else lmi.stream_line(item, details)


async def _run_workflow(request: Request, name: str) -> Response:
    refuse_handler_override(request)
    body = await read_body(request, config_of(request).max_request_bytes)
    parse_json_body(body, request.headers.get("content-type"))
    reply = await request.app.state.workflows.execute(name, build_wire_input(request, body))
    return reply_to_response(reply)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format; engine figures are fetched from the workers at scrape time."""
    recorder = request.app.state.metrics
    await recorder.refresh(list(manager_of(request).models.values()))
    return Response(generate_latest(recorder.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/invocations", openapi_extra=LMI_BODY)
async def invocations(request: Request) -> Response:
    """SageMaker: the target model header names a model or workflow, loaded on first call."""
    manager = manager_of(request)
    name = request.headers.get(TARGET_MODEL) or request.query_params.get("model_name")
    if name and name not in manager.models and name not in request.app.state.workflows.workflows:
        name = archive_stem(name)  # "base-1.tar.gz" is the model served as "base-1"
    if name and name in request.app.state.workflows.workflows:
        return await _run_workflow(request, name)
    if name:
        return await _predict(request, await manager.get_or_load(name))
    workflows = request.app.state.workflows
    if len(workflows.workflows) == 1 and set(manager.models) <= workflows.owned_models():
        return await _run_workflow(request, next(iter(workflows.workflows)))  # the single endpoint
    return await _predict(request, manager.single_model())


@router.post("/predictions/{model_name}", openapi_extra=LMI_BODY)
async def predictions(request: Request, model_name: str) -> Response:
    if model_name in request.app.state.workflows.workflows:
        return await _run_workflow(request, model_name)
    return await _predict(request, manager_of(request).get(model_name))


@router.post("/predictions/{model_name}/{version}", openapi_extra=LMI_BODY)
async def predictions_version(request: Request, model_name: str, version: str) -> Response:
    model = manager_of(request).get(model_name)
    if model.version not in (None, version):
        raise ModelNotFoundError(f"model {model_name} version {version} not found")
    return await _predict(request, model)
