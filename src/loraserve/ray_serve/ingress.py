"""The ingress deployment: a FastAPI app made of loraserve's own routers (SageMaker/LMI, the
adapters API, OpenAI) over the Ray-backed model, so clients of ``loraserve serve`` do not
change. ``/metrics`` adds per-replica series; ``GET /replicas`` shows each replica's adapters."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraserve import __version__
from loraserve.api import adapters, inference, openai
from loraserve.api.app import install_error_handlers
from loraserve.api.security import install_access_policy
from loraserve.model_store import startup_adapter_dirs
from loraserve.ray_serve.config import RayAppConfig
from loraserve.ray_serve.ray_model import RayModel, RayModelManager
from loraserve.ray_serve.replica_stats import ReplicaCollector, aggregate
from loraserve.ray_serve.routing import REPLICA_HEADER, SERVED_BY, ReplicaCaller
from loraserve.serving.metrics import ServerMetrics
from loraserve.workflows.manager import WorkflowManager

log = logging.getLogger("loraserve.ray.ingress")
replicas_router = APIRouter()


class RayServerMetrics(ServerMetrics):
    """loraserve's request metrics; engine figures gathered from every replica at scrape time."""

    def __init__(self, model: RayModel) -> None:
        super().__init__()
        self.model = model
        self.replicas = ReplicaCollector(model.name)
        self.registry.register(self.replicas)

    async def refresh(self, _models: list[Any]) -> None:
        figures = await self.model.caller.broadcast("stats")
        self.replicas.replicas = figures
        self.replicas.routed = dict(self.model.caller.routed)
        self.engine.stats[self.model.name] = aggregate(figures)


@replicas_router.get("/replicas")
async def replicas(request: Request) -> JSONResponse:
    """Every live replica's adapters (held, pinned, in Ray's LRU, served) and engine figures."""
    model: RayModel = request.app.state.manager.single_model()
    figures = sorted(await model.caller.broadcast("stats"), key=lambda f: f["replica"])
    return JSONResponse({"model": model.name, "replicas": figures})


class ReplicaHeader:
    """Names the replica that served a request in ``x-loraserve-replica`` (the routes build
    their own headers from the typed result; the replica is known only to the Ray call)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        served: list[str] = []
        token = SERVED_BY.set(served)

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start" and served:
                headers = MutableHeaders(scope=message)
                headers[REPLICA_HEADER] = served[-1]
            await send(message)

        try:
            await self.app(scope, receive, send_named)
        finally:
            SERVED_BY.reset(token)


def build_ingress_app(manager: RayModelManager) -> FastAPI:
    app = FastAPI(title="loraserve on Ray Serve", version=__version__)
    app.state.manager = manager
    app.state.workflows = WorkflowManager(manager)  # type: ignore[arg-type]  # none: routes ask for it
    app.state.metrics = manager.single_model().observer = RayServerMetrics(manager.single_model())
    app.state.config = manager.config
    app.state.started = True  # Serve routes here only once every deployment is up
    install_error_handlers(app)
    install_access_policy(app, manager.config)  # loraserve serve's tokens, Host/Origin and body rules
    app.include_router(inference.router)
    app.include_router(adapters.router)
    app.include_router(openai.router)
    app.include_router(replicas_router)
    app.add_middleware(ReplicaHeader)
    return app


class Ingress:
    """Wrapped by ``serve.ingress()`` in ``app.py``; the app is built in the replica."""

    # An async constructor: Ray Serve awaits it before the replica takes requests.
    async def __init__(self, engine: Any, config: RayAppConfig) -> None:  # type: ignore[misc]
        self.model = RayModel(config, ReplicaCaller(engine))
        self.manager = RayModelManager(self.model)
        failed = await self.model.register_startup_adapters(startup_adapter_dirs(config.model_dir))
        if failed:
            log.error("start-up adapters refused (see the replica logs): %s", ", ".join(failed))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_ingress_app(self.manager)
