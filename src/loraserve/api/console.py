"""The web console: one static page (``/console``), its chart library and the JSON state it polls."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from loraserve.api.console_state import model_state
from loraserve.api.deps import manager_of
from loraserve.api.security import CONSOLE_ASSETS

router = APIRouter()
STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "console.html"
# uPlot 1.6.32 (MIT), shipped with the package so the charts work offline: static/vendor/README.md
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css"}


@router.get("/console", include_in_schema=False)
async def console() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")


def _serve_asset(path: str) -> None:
    """A route for one file of the chart library: each listed path, nothing else under it."""
    file = STATIC / "vendor" / path.rsplit("/", 1)[1]
    media_type = MEDIA_TYPES[file.suffix]

    async def asset() -> FileResponse:
        return FileResponse(file, media_type=media_type)

    router.add_api_route(path, asset, methods=["GET"], include_in_schema=False)


for _path in sorted(CONSOLE_ASSETS):
    _serve_asset(_path)


@router.get("/console/state")
async def console_state(request: Request) -> JSONResponse:
    """Models (adapters with tier, KV cache, the engine's counters, per-adapter traffic) and the
    server's generated-token counter, counted as tokens are generated, with its recent rate."""
    manager = manager_of(request)
    metrics = request.app.state.metrics
    await metrics.refresh(list(manager.models.values()))
    return JSONResponse(
        {
            "time": time.time(),  # the page charts against the server's clock
            "models": [model_state(model, metrics) for model in manager.models.values()],
            "generated_tokens": metrics.generated_tokens,
            "tokens_per_s": round(metrics.rate.rate(time.monotonic()), 2),
            "rate_window_s": metrics.rate.seconds,
        }
    )
