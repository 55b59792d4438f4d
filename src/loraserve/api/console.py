"""The web console: one static page (``/console``) and the JSON state it polls."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from loraserve.adapters.registry import AdapterRecord, AdapterState
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
    """Models, their adapters with state (registered / in memory / resident / pinned) and the
    token counter the page turns into live throughput."""
    manager = manager_of(request)
    metrics = request.app.state.metrics
    await metrics.refresh(list(manager.models.values()))
    models = []
    for model in manager.models.values():
        engine = metrics.engine.stats.get(model.name, {})
        tiers = engine.get("adapter_tiers", {})
        adapters = [
            {
                "name": r.name,
                "src": r.src,
                "pin": r.pin,
                "state": r.state.value,
                "error": r.error,
                "tier": _tier(r, tiers),
            }
            for r in model.registry.records()
        ]
        models.append(
            {
                "name": model.name,
                "status": model.status.value,
                "engine": "built-in" if model.uses_builtin_engine else "python",
                "adapters": adapters,
                "kv": _kv(engine),
            }
        )
    return JSONResponse({"models": models, "generated_tokens": metrics.generated_tokens})


def _kv(engine: dict) -> dict | None:
    """The KV-cache line of a built-in engine: blocks in use, prefix-cache hits, preemptions."""
    if "kv_blocks_total" not in engine:
        return None
    return {
        "blocks_used": engine["kv_blocks_total"] - engine["kv_blocks_free"],
        "blocks_total": engine["kv_blocks_total"],
        "prefix_hit_rate": engine["prefix_cache_hit_rate"],
        "preemptions": engine["preemptions"],
    }


def _tier(record: AdapterRecord, tiers: dict[str, str]) -> str:
    """What the page shows: failed (with its reason beside it), pinned, or the engine's tier."""
    if record.state is AdapterState.FAILED:
        return "failed"
    return "pinned" if record.pin else tiers.get(record.name, "registered")
