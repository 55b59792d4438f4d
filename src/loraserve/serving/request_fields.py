"""What the serving layer knows about the request being served (model, adapter, tokens),
handed up to the HTTP layer's one log line per request (``api.request_log``) without either
calling the other: the HTTP layer opens a dict per request, the observer notes into it."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

# The fields of the request being served; one dict, shared with the tasks that serve it.
_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar("loraserve_request_fields", default=None)


def open_request(fields: dict[str, Any]) -> Token:
    return _FIELDS.set(fields)


def close_request(token: Token) -> None:
    _FIELDS.reset(token)


def note(**fields: Any) -> bool:
    """Add ``fields`` to the current request's line; False outside a logged request."""
    current = _FIELDS.get()
    if current is None:
        return False
    current.update(fields)
    return True
