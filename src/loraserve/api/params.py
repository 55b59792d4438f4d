"""Query-parameter parsing shared by the management routes (DJL passes options as query)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from loraserve.adapters.registry import paginate
from loraserve.config import parse_bool, parse_int
from loraserve.errors import BadRequestError, ConfigError


async def merged_params(request: Request) -> dict[str, str]:
    """Query parameters, plus fields of a JSON object body (the query wins)."""
    params: dict[str, str] = {}
    body = await request.body()
    if body.strip():
        try:
            parsed: Any = json.loads(body)
        except ValueError as exc:
            raise BadRequestError(f"malformed JSON body: {exc}") from None
        if not isinstance(parsed, dict):
            raise BadRequestError("the JSON body must be an object")
        params.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in parsed.items()})
    params.update(request.query_params)
    return params


def opt_bool(params: dict[str, str], key: str, default: bool | None) -> bool | None:
    if key not in params:
        return default
    try:
        return parse_bool(params[key], key)
    except ConfigError as exc:
        raise BadRequestError(exc.message) from None


def opt_int(params: dict[str, str], key: str, default: int | None, minimum: int = 0) -> int | None:
    if key not in params or params[key] == "":
        return default
    try:
        return parse_int(params[key], key, minimum)
    except ConfigError as exc:
        raise BadRequestError(exc.message) from None


def paged_response(request: Request, key: str, items: list) -> JSONResponse:
    """DJL's list shape: ``{key: [...], "nextPageToken": ...}`` from ``limit``/``next_page_token``."""
    page, token = paginate(items, request.query_params.get("limit"),
                           request.query_params.get("next_page_token"))
    body: dict[str, object] = {key: page}
    if token is not None:
        body["nextPageToken"] = token
    return JSONResponse(body)
