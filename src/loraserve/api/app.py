"""The FastAPI application: routes, one error mapping, and the model manager's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from loraserve import __version__
from loraserve.adapters import archives
from loraserve.api import (
    adapters,
    console,
    inference,
    llamacpp,
    management,
    openai,
    tgi,
    vllm,
    workflows,
)
from loraserve.api.errors import install_error_handlers
from loraserve.api.request_log import install_request_log
from loraserve.api.security import install_access_policy
from loraserve.config import ServerConfig
from loraserve.errors import LoraserveError
from loraserve.model_store import startup_workflow_dirs
from loraserve.serving.metrics import ServerMetrics
from loraserve.serving.model_manager import ModelManager
from loraserve.workflows.manager import WorkflowManager

log = logging.getLogger("loraserve.api")
access_log = logging.getLogger("loraserve.access")


def create_app(config: ServerConfig, manager: ModelManager | None = None) -> FastAPI:
    manager = manager or ModelManager(config)
    archives.configure(archives.ArchiveLimits(config.max_archive_bytes, config.max_archive_entries))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def start() -> None:
            try:
                await manager.start()
                await start_workflows(app.state.workflows, config)
            finally:
                app.state.started = True
                log.info(ready_banner(config, manager))

        startup = asyncio.create_task(start())  # serve /ping (503) while models load
        try:
            yield
        finally:
            startup.cancel()
            await manager.stop()

    app = FastAPI(title="loraserve", version=__version__, lifespan=lifespan)
    app.state.manager = manager
    app.state.workflows = WorkflowManager(manager)
    app.state.metrics = manager.observer = ServerMetrics(config.max_adapter_labels)
    app.state.config = config
    app.state.started = False
    install_error_handlers(app)
    install_access_policy(app, config)  # the same on the Ray ingress

    install_request_log(app)

    app.include_router(inference.router)
    app.include_router(adapters.router)  # before management: /models/{m}/adapters wins
    app.include_router(management.router)
    app.include_router(workflows.router)
    app.include_router(openai.router)
    app.include_router(vllm.router)  # other servers' conventions
    app.include_router(tgi.router)
    app.include_router(llamacpp.router)
    app.include_router(console.router)
    return app


async def start_workflows(manager: WorkflowManager, config: ServerConfig) -> None:
    """Folders that hold a ``workflow.json`` (and no model), in the store or named by
    ``--models`` / DJL's ``load_models``, are workflows."""
    for path in startup_workflow_dirs(config.model_store, config.models):
        try:
            await manager.register(workflows.read_workflow_file(path))
        except LoraserveError as exc:
            log.error("workflow in %s failed to load: %s", path, exc)


def ready_banner(config: ServerConfig, manager: ModelManager) -> str:
    """The one line a user waits for: where to point a client, or which model did not load."""
    host = "localhost" if config.host in ("0.0.0.0", "::", "127.0.0.1") else config.host
    base = f"http://{host}:{config.port}"
    failed = {name: model.error for name, model in manager.models.items() if model.status.value != "READY"}
    if failed:
        reasons = "; ".join(f"{name}: {error}" for name, error in failed.items())
        return f"start-up done, but not ready ({len(failed)} model(s) failed: {reasons}); /ping says 503"
    names = ", ".join(manager.models) or "none yet: register one with POST /models"
    return (
        f"loraserve {__version__} ready: API {base}  console {base}/console  OpenAI base URL "
        f"{base}/v1  (models: {names})"
    )
