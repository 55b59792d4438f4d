"""One log line per request: method, path, status and latency from the HTTP layer, joined by
what the inference observer learnt (model, adapter, generated tokens) — written when the response
body has been sent, so a stream's line has its whole length. Probes and scrapes (``/ping``,
``/health``, ``/metrics``) write none. ``--log-format json`` makes every log record one JSON
object (``JsonFormatter``); a request's fields are then keys, not text."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from loraserve.serving.request_fields import close_request, open_request

log = logging.getLogger("loraserve.access")
QUIET_PATHS = frozenset({"/ping", "/health", "/metrics", "/console/state"})


def install_request_log(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_log(request: Request, call_next: Any) -> Any:
        if request.url.path in QUIET_PATHS:
            return await call_next(request)
        fields: dict[str, Any] = {"method": request.method, "path": request.url.path}
        token = open_request(fields)  # the inference observer adds model, adapter and tokens
        started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            close_request(token)
        fields["status"] = response.status_code
        response.body_iterator = _logged(response.body_iterator, fields, started)
        return response


async def _logged(body: AsyncIterator[bytes], fields: dict[str, Any], started: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        fields["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("method", "path", "status"))
        log.info(
            "%s %s %s %s", fields["method"], fields["path"], fields["status"], text, extra={"fields": fields}
        )


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; a request line's fields become its keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
