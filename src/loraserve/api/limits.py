"""Bounds on what a request body may be, applied to every route by one ASGI middleware:
its size (declared or streamed) and, for JSON, how deeply it nests — Python's JSON parser
recurses, so 100,000 nested brackets would otherwise end in a RecursionError.

The limits raise Starlette's ``HTTPException``, which FastAPI lets through its body parsing,
so they reach the one error mapping (``api/errors.py``) as JSON 413 / 400.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraserve.api.errors import error_response

_SPECIAL = re.compile(rb'[\[\]{}"\\]')
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = b"[{", b"]}", ord('"'), ord("\\")


class JsonDepthGuard:
    """Tracks the nesting depth of a JSON text fed in chunks, without parsing it; brackets
    inside strings (escapes included) do not count. O(n) over the special characters only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.depth = 0
        self.in_string = False
        self.escaped = False  # the previous chunk ended on a backslash inside a string

    def feed(self, chunk: bytes) -> None:
        """Raise ``HTTPException(400)`` as soon as the depth passes the limit."""
        skip = 1 if self.escaped and chunk else 0
        self.escaped = self.escaped and not chunk
        for match in _SPECIAL.finditer(chunk):
            i = match.start()
            if i < skip:
                continue
            char = chunk[i]
            if self.in_string:
                if char == _BACKSLASH:
                    skip, self.escaped = i + 2, i + 1 >= len(chunk)
                elif char == _QUOTE:
                    self.in_string = False
            elif char == _QUOTE:
                self.in_string = True
            elif char in _OPEN:
                self.depth += 1
                if self.depth > self.limit:
                    raise HTTPException(400, f"JSON nested deeper than {self.limit} levels")
            elif char in _CLOSE:
                self.depth = max(0, self.depth - 1)


def loads_bounded(text: str | bytes, max_depth: int) -> Any:
    """``json.loads`` after a depth check (``ValueError`` for malformed JSON, as json raises)."""
    raw = text.encode() if isinstance(text, str) else text
    JsonDepthGuard(max_depth).feed(raw)
    return json.loads(raw)


def _guards_json(headers: dict[bytes, bytes]) -> bool:
    """JSON bodies, and bodies with no type (some routes parse those as JSON too)."""
    kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return not kind or kind.endswith(b"json")


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` (413) and JSON deeper than ``max_depth`` (400)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(
                413,
                "PayloadTooLargeException",
                f"request body of {declared} bytes exceeds the limit of {self.max_bytes} (max_request_bytes)",
                scope["path"],
            )
            await response(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive, _guards_json(headers)), send)

    def _bounded(self, receive: Receive, check_json: bool) -> Receive:
        received = 0
        guard = JsonDepthGuard(self.max_depth) if check_json else None

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.max_bytes:
                    raise HTTPException(
                        413, f"request body exceeds the limit of {self.max_bytes} bytes (max_request_bytes)"
                    )
                if guard is not None:
                    guard.feed(chunk)
            return message

        return bounded_receive
