"""Turn a handler's reply (wire Output, maybe a stream) into an HTTP response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from loraserve.errors import HandlerError
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.frames import ReplyKind

_SKIP_HEADERS = {"content-length", "transfer-encoding", "connection"}


def _guess_type(body: bytes) -> str:
    try:
        json.loads(body)
        return "application/json"
    except (ValueError, UnicodeDecodeError):
        return "text/plain; charset=utf-8"


def reply_to_response(reply: WorkerReply) -> Response:
    output = reply.output
    if reply.kind is not ReplyKind.DJL:  # None, or typed (not a user handler's Output)
        raise HandlerError("the handler returned no output for this request")
    headers = {k: v for k, v in output["properties"].items() if k.lower() not in _SKIP_HEADERS}
    media_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    if reply.stream is not None:
        return CancellingStreamingResponse(
            _drain(reply.stream),
            reply,
            status_code=output["code"],
            media_type=media_type or "application/jsonlines",
            headers=headers,
        )
    values = [v for _, v in output["content"]]
    body = values[0] if len(values) == 1 else b"\n".join(values)
    return Response(
        body, status_code=output["code"], headers=headers, media_type=media_type or _guess_type(body)
    )


async def _drain(stream: asyncio.Queue) -> AsyncIterator[bytes]:
    """Chunks until the end marker; an error after the headers went out ends the stream with
    a last JSON line naming it (the status code can no longer change)."""
    while True:
        item = await stream.get()
        if item is None:
            return
        if isinstance(item, Exception):
            yield json.dumps({"error": str(item)}).encode() + b"\n"
            return
        yield item


class CancellingStreamingResponse(StreamingResponse):
    """A streaming response that cancels its call on the worker when it ends for any reason
    (client gone, send failed): a generator's own ``finally`` only runs when it is collected."""

    def __init__(self, content: AsyncIterator[bytes], reply: WorkerReply, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.reply = reply

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.reply.cancel is not None:
                self.reply.cancel()
