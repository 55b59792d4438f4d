"""Every error the HTTP layer returns, in one place: typed errors → DJL's JSON error body
(``{"code", "type", "message"}``) with their status, or OpenAI's (``{"error": {...}}``) under
``/v1/``, where OpenAI clients read it; anything unexpected → a 500 that names the exception
type and never carries a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraserve.errors import LoraserveError

log = logging.getLogger("loraserve.api")
HTTP_TYPES = {
    401: "UnauthorizedException",
    403: "ForbiddenException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    413: "PayloadTooLargeException",
    415: "UnsupportedMediaTypeException",
}


def error_response(status: int, error_type: str, message: str, path: str = "") -> JSONResponse:
    """The error body the route at ``path`` speaks: OpenAI's under ``/v1/``, else DJL's."""
    if path.startswith("/v1/"):
        body: dict = {"error": {"message": message, "type": error_type, "code": status}}
        return JSONResponse(body, status_code=status)
    return JSONResponse({"code": status, "type": error_type, "message": message}, status_code=status)


def validation_message(errors: list[dict]) -> str:
    """``field: problem`` for each pydantic error, without echoing the (maybe huge) input."""
    parts = []
    for error in errors[:10]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoraserveError)
    async def _known(request: Request, exc: LoraserveError) -> JSONResponse:
        if request.url.path.startswith("/v1/"):
            return error_response(exc.status_code, exc.error_type, exc.message, request.url.path)
        return JSONResponse(exc.to_json(), status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = HTTP_TYPES.get(
            exc.status_code, "BadRequestException" if exc.status_code < 500 else "InternalServerException"
        )
        return error_response(exc.status_code, kind, str(exc.detail), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = validation_message(list(exc.errors()))
        return error_response(400, "BadRequestException", message, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        path = request.url.path
        if isinstance(exc, RecursionError):  # a parser somewhere met input nested too deeply
            return error_response(400, "BadRequestException", "request is nested too deeply", path)
        log.exception("unexpected error")
        return error_response(500, "InternalServerException", f"internal error: {type(exc).__name__}", path)
