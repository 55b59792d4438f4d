"""One encoding of a refusal or failure between worker and front: the status, the error type
and the message travel, and the front raises the same ``LoraserveError`` the worker raised."""

from __future__ import annotations

from typing import Any

from loraserve.errors import HandlerError, LoraserveError


def encode_error(exc: BaseException) -> dict[str, Any]:
    """A typed refusal keeps its status and type; anything else is the handler's failure,
    with DJL's status for it (507 when it ran out of memory, else 424)."""
    if isinstance(exc, LoraserveError):
        return {"message": exc.message, "status": exc.status_code, "type": exc.error_type}
    return {
        "message": f"{type(exc).__name__}: {exc}",
        "status": failure_status(exc),
        "type": "PredictionException",
    }


def decode_error(fields: dict[str, Any]) -> LoraserveError:
    if "status" not in fields:  # a stream ended by a user's handler: only its text is known
        return HandlerError(f"handler error: {fields.get('message')}")
    error = LoraserveError(str(fields.get("message")), status_code=int(fields["status"]))
    error.error_type = str(fields.get("type", error.error_type))
    return error


def failure_status(exc: BaseException) -> int:
    """DJL's status for a handler's exception: 507 when it ran out of (GPU) memory, else 424."""
    text = str(exc)
    if type(exc).__name__ in ("MemoryError", "OutOfMemoryError") or any(
        s in text for s in ("CUDA error: out of memory", "No available memory for the cache blocks")
    ):
        return 507
    return 424
