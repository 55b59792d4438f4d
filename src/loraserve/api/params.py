"""Parameters of the management routes (DJL passes options as query parameters, SageMaker
as a JSON body): their declared types (so the OpenAPI document shows them) and parsing."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator, Field, ValidationInfo

from loraserve.adapters.registry import paginate
from loraserve.api.limits import loads_bounded
from loraserve.config import ServerConfig, parse_bool
from loraserve.errors import BadRequestError, ConfigError


def _strict_bool(value: Any, info: ValidationInfo) -> Any:
    """The spellings ``parse_bool`` accepts, with its message for anything else."""
    if value is None:
        return None
    try:
        return parse_bool(value, info.field_name or "value")
    except ConfigError as exc:
        raise ValueError(exc.message) from None


Flag = Annotated[bool | None, BeforeValidator(_strict_bool)]
Workers = Annotated[int | None, Field(ge=1, description="worker processes (at most max_workers_per_model)")]
Limit = Annotated[int | None, Field(ge=1, description="page size (default 100)")]
PageToken = Annotated[int | None, Field(ge=0, description="offset returned as nextPageToken")]


def check_worker_counts(config: ServerConfig, *counts: int | None) -> None:
    """Worker counts are bounded: each one is a process (and a copy of the model)."""
    for count in counts:
        if count is not None and count > config.max_workers_per_model:
            raise BadRequestError(
                f"{count} workers asked for; at most {config.max_workers_per_model} "
                "per model (max_workers_per_model)"
            )


async def merged_params(request: Request, max_depth: int = 64) -> dict[str, str]:
    """Query parameters, plus fields of a JSON object body (the query wins)."""
    params: dict[str, str] = {}
    body = await request.body()
    if body.strip():
        try:
            parsed: Any = loads_bounded(body, max_depth)
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


def paged_response(request: Request, key: str, items: list) -> JSONResponse:
    """DJL's list shape: ``{key: [...], "nextPageToken": ...}`` from ``limit``/``next_page_token``."""
    page, token = paginate(
        items, request.query_params.get("limit"), request.query_params.get("next_page_token")
    )
    body: dict[str, object] = {key: page}
    if token is not None:
        body["nextPageToken"] = token
    return JSONResponse(body)
