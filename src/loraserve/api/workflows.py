"""Workflow management routes: register (from a URL or a template), list, describe, scale,
unregister. Inference goes through ``/predictions/{workflow}`` and ``/invocations``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from loraserve.adapters.sources import local_path_of
from loraserve.api.deps import config_of
from loraserve.api.management import scaled_status
from loraserve.api.params import opt_int, paged_response
from loraserve.errors import BadRequestError
from loraserve.workflows.manager import WorkflowManager
from loraserve.workflows.spec import WorkflowSpec, load_document, parse_workflow
from loraserve.workflows.templates import instantiate, template_text

router = APIRouter()


def workflows_of(request: Request) -> WorkflowManager:
    return request.app.state.workflows


def read_workflow_file(path: Path) -> WorkflowSpec:
    """A ``workflow.json``/``.yaml`` file, or a directory holding one."""
    if path.is_dir():
        found = [path / n for n in ("workflow.json", "workflow.yaml", "workflow.yml") if (path / n).is_file()]
        if not found:
            raise BadRequestError(f"{path} holds no workflow.json")
        path = found[0]
    if not path.is_file():
        raise BadRequestError(f"workflow {path} does not exist")
    return parse_workflow(load_document(path.read_text(encoding="utf-8"), str(path)), path.parent)


@router.post("/workflows")
async def register_workflow(request: Request) -> JSONResponse:
    params = dict(request.query_params)
    store = config_of(request).model_store
    if "template" in params:
        template = params.pop("template")
        text = instantiate(template_text(template, store), params)
        spec = parse_workflow(load_document(text, f"template {template}"), store)
    elif params.get("url"):
        spec = await asyncio.to_thread(read_workflow_file, local_path_of(params["url"], store))
    else:
        raise BadRequestError("parameter url (a workflow file) or template is required")
    await workflows_of(request).register(spec)
    return JSONResponse({"status": f'Workflow "{spec.name}" registered.'})


@router.get("/workflows")
async def list_workflows(request: Request) -> JSONResponse:
    manager = workflows_of(request)
    items = [{"workflowName": n, "version": w.spec.version, "models": list(w.served.values())}
             for n, w in manager.workflows.items()]
    return paged_response(request, "workflows", items)


@router.get("/workflows/{name}")
@router.get("/workflows/{name}/{version}")
async def describe_workflow(request: Request, name: str, version: str | None = None) -> JSONResponse:
    return JSONResponse([workflows_of(request).describe(name)])


@router.put("/workflows/{name}")
@router.put("/workflows/{name}/{version}")
async def scale_workflow(request: Request, name: str, version: str | None = None) -> JSONResponse:
    manager = workflows_of(request)
    manager.describe(name)  # 404 when unknown
    params = dict(request.query_params)
    for served in manager.workflows[name].served.values():
        model = manager.models.get(served)
        low = opt_int(params, "min_worker", model.config.min_workers, 1)
        high = opt_int(params, "max_worker", model.config.max_workers, 1)
        assert low is not None and high is not None
        await model.workers.scale(low, max(low, high))
    return JSONResponse({"status": scaled_status(name, low, max(low, high))})


@router.delete("/workflows/{name}")
@router.delete("/workflows/{name}/{version}")
async def unregister_workflow(request: Request, name: str, version: str | None = None) -> JSONResponse:
    await workflows_of(request).unregister(name)
    return JSONResponse({"status": f'Model or workflow "{name}" unregistered'})  # DJL's text
