"""Workflow management routes: register (from a URL or a template), list, describe, scale,
unregister. Inference goes through ``/predictions/{workflow}`` and ``/invocations``.

Workflow files, template files and the models a workflow registered over the API declares
must lie inside the allowed model roots: a workflow loads models, and models run code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loraserve.adapters.sources import ensure_inside, local_path_of
from loraserve.api.deps import config_of
from loraserve.api.management import Page, WorkerScale, scaled_status
from loraserve.api.params import check_worker_counts, paged_response
from loraserve.errors import BadRequestError
from loraserve.workflows.manager import WorkflowManager
from loraserve.workflows.spec import WorkflowSpec, load_document, parse_workflow, read_document_text
from loraserve.workflows.templates import BUILTIN_TEMPLATES, instantiate, template_text

router = APIRouter(tags=["workflows"])


class WorkflowRegistration(BaseModel):
    """``url`` or ``template``; with a template every other query parameter fills a ``$name``."""

    model_config = ConfigDict(extra="allow")
    url: str | None = Field(
        None, description="workflow.json/.yaml file or directory holding one, inside the allowed model roots"
    )
    template: str | None = Field(
        None,
        description=f"a built-in template ({', '.join(BUILTIN_TEMPLATES)}) "
        "or a template file inside the allowed model roots",
    )


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
    return parse_workflow(load_document(read_document_text(path), str(path)), path.parent)


def _spec_from_request(request: Request, params: dict[str, str]) -> WorkflowSpec:
    config = config_of(request)
    store, roots = config.model_store, config.model_roots
    if "template" in params:
        template = params.pop("template")
        text = instantiate(template_text(template, store, roots), params)
        return parse_workflow(load_document(text, f"template {template}"), store)
    if params.get("url"):
        path = local_path_of(params["url"], store)
        ensure_inside(path, roots, kind="model")
        return read_workflow_file(path)
    raise BadRequestError("parameter url (a workflow file) or template is required")


@router.post("/workflows")
async def register_workflow(
    request: Request, _query: Annotated[WorkflowRegistration, Query()]
) -> JSONResponse:
    spec = await asyncio.to_thread(_spec_from_request, request, dict(request.query_params))
    await workflows_of(request).register(spec, roots=config_of(request).model_roots)
    return JSONResponse({"status": f'Workflow "{spec.name}" registered.'})


@router.get("/workflows")
async def list_workflows(request: Request, _page: Annotated[Page, Query()]) -> JSONResponse:
    manager = workflows_of(request)
    items = [
        {"workflowName": n, "version": w.spec.version, "models": list(w.served.values())}
        for n, w in manager.workflows.items()
    ]
    return paged_response(request, "workflows", items)


@router.get("/workflows/{name}")
@router.get("/workflows/{name}/{version}")
async def describe_workflow(request: Request, name: str, version: str | None = None) -> JSONResponse:
    return JSONResponse([workflows_of(request).describe(name)])


@router.put("/workflows/{name}")
@router.put("/workflows/{name}/{version}")
async def scale_workflow(
    request: Request, name: str, scale: Annotated[WorkerScale, Query()], version: str | None = None
) -> JSONResponse:
    """Scale the workers of every model the workflow uses, within ``max_workers_per_model``."""
    manager = workflows_of(request)
    manager.describe(name)  # 404 when unknown
    check_worker_counts(config_of(request), scale.min_worker, scale.max_worker)
    low = high = scale.min_worker or 1  # a workflow with no model of its own
    for served in manager.workflows[name].served.values():
        model = manager.models.get(served)
        low = scale.min_worker or model.config.min_workers
        high = scale.max_worker or model.config.max_workers
        await model.workers.scale(low, max(low, high))
    return JSONResponse({"status": scaled_status(name, low, max(low, high))})


@router.delete("/workflows/{name}")
@router.delete("/workflows/{name}/{version}")
async def unregister_workflow(request: Request, name: str, version: str | None = None) -> JSONResponse:
    await workflows_of(request).unregister(name)
    return JSONResponse({"status": f'Model or workflow "{name}" unregistered'})  # DJL's text
