"""Who may call what: bearer tokens per route class, and refusal of cross-site and
DNS-rebinding requests (Origin / Sec-Fetch-Site / Host checks). One ASGI middleware, so every
route — including ones added later — is covered: a path not listed as open or inference is
a management path. ``install_access_policy`` puts it (with the body bounds) on an app: every
front — ``loraserve serve`` and the Ray ingress — calls it, so they enforce one policy.
"""

from __future__ import annotations

import hmac
from enum import Enum
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from loraserve.api.errors import error_response
from loraserve.api.limits import BodyLimitMiddleware
from loraserve.config import ServerConfig

# The console's chart library (``api/static/vendor``): public code, no data, like the page.
CONSOLE_ASSETS = frozenset({"/console/vendor/uPlot.iife.min.js", "/console/vendor/uPlot.min.css"})
OPEN_PATHS = (
    frozenset({"/ping", "/health", "/console", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
    | CONSOLE_ASSETS
)
# SageMaker's, and TGI's / LoRAX's generation routes (``/`` is TGI's, which their clients call).
INFERENCE_PATHS = frozenset({"/invocations", "/", "/generate", "/generate_stream"})
INFERENCE_PREFIXES = ("/predictions/", "/v1/")
# vLLM puts adapter loading under /v1/; it changes what is served, so it is management.
MANAGEMENT_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a browser may send cross-origin without a CORS preflight ("simple" requests).
SIMPLE_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


class Access(str, Enum):
    OPEN = "open"
    INFERENCE = "inference"
    MANAGEMENT = "management"


def access_of(path: str) -> Access:
    """``/ping`` and ``/health``, the console page (and its chart library) and the API document
    are open; predictions, invocations, TGI's generation and the OpenAI routes are inference; the
    rest is management (models, adapters — vLLM's and llama.cpp's too —, workflows, ``/metrics``,
    ``/console/state``, unknown paths)."""
    if path in OPEN_PATHS:
        return Access.OPEN
    if path in MANAGEMENT_PATHS:
        return Access.MANAGEMENT
    if path in INFERENCE_PATHS or path.startswith(INFERENCE_PREFIXES):
        return Access.INFERENCE
    return Access.MANAGEMENT


def accepted_tokens(access: Access, api_token: str | None, management_token: str | None) -> list[str]:
    """Tokens that open ``access``; an empty list means no token is needed.

    The management token opens everything. Without one, the API token guards management too
    (setting only ``--api-token`` must not leave management open)."""
    if access is Access.OPEN:
        return []
    if access is Access.INFERENCE:
        return [t for t in (api_token, management_token) if t] if api_token else []
    guard = management_token or api_token
    return [guard] if guard else []


def bearer_matches(header: str | None, tokens: list[str]) -> bool:
    """``Authorization: Bearer <token>`` equal to one of ``tokens``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    given_bytes = given.strip().encode("latin-1", "replace")  # the header's raw bytes
    matched = False
    for token in tokens:  # no early exit: the time does not say which token was close
        matched |= hmac.compare_digest(given_bytes, token.encode("utf-8"))
    return matched


def host_name(host_header: str) -> str:
    """``example.com:8080`` → ``example.com``; ``[::1]:8080`` → ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str | None, allowed: list[str]) -> bool:
    if "*" in allowed:
        return True
    return bool(host_header) and host_name(host_header or "") in {h.lower() for h in allowed}


def cross_site_reason(method: str, headers: dict[str, str], allowed_origins: list[str]) -> str | None:
    """Why a state-changing request looks like it came from another site's page (None if not).

    Browsers send ``Origin`` with every cross-origin POST/PUT/DELETE: it must name this
    server (the ``Host`` it addressed) or an allowed origin. Without ``Origin``, a
    ``Sec-Fetch-Site: cross-site`` still gives a browser away. Clients that are not browsers
    send neither and pass."""
    if method in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is not None:
        if origin.rstrip("/") in {o.rstrip("/") for o in allowed_origins}:
            return None
        parts = urlsplit(origin)
        if origin == "null" or not parts.netloc:
            return f"origin {origin!r} is not allowed"
        if parts.netloc.lower() != headers.get("host", "").lower():
            return f"cross-origin request from {origin} refused (add it to allowed_origins to allow it)"
        return None
    if headers.get("sec-fetch-site") == "cross-site":
        return "cross-site request refused"
    return None


def simple_body_refused(method: str, headers: dict[str, str]) -> bool:
    """A management request that carries a body a cross-site form could have sent: the
    management API takes JSON (or query parameters), never forms or text/plain."""
    if method in SAFE_METHODS:
        return False
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
    return has_body and kind in SIMPLE_CONTENT_TYPES


class SecurityMiddleware:
    """Host, Origin and token checks before any route runs; each refusal a JSON error."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await refusal(scope, receive, send)

    def refusal(self, scope: Scope):
        config = self.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        if not host_allowed(headers.get("host"), config.trusted_hosts):
            return error_response(
                400, "BadRequestException", "this Host header is not allowed (see allowed_hosts)", path
            )
        access = access_of(path)
        if access is not Access.OPEN:
            reason = cross_site_reason(method, headers, config.allowed_origins)
            if reason:
                return error_response(403, "ForbiddenException", reason, path)
        tokens = accepted_tokens(access, config.api_token, config.management_token)
        if tokens and not bearer_matches(headers.get("authorization"), tokens):
            needs = f"this {access.value} route needs 'Authorization: Bearer <token>'"
            response = error_response(401, "UnauthorizedException", needs, path)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if access is Access.MANAGEMENT and simple_body_refused(method, headers):
            return error_response(
                415,
                "UnsupportedMediaTypeException",
                "management requests take query parameters or a JSON body (Content-Type: application/json)",
                path,
            )
        return None


def install_access_policy(app: Starlette, config: ServerConfig) -> None:
    """The access rules of every front: Host / Origin / token checks first, then the body
    bounds (``max_request_bytes``, ``max_json_depth``), then the routes. Middleware added
    after this call wraps these (Starlette runs the last added first)."""
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=config.max_request_bytes, max_depth=config.max_json_depth
    )
    app.add_middleware(SecurityMiddleware, config=config)
