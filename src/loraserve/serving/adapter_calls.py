"""The wire messages of adapter operations, as DJL's handlers expect them, and their replies."""

from __future__ import annotations

import json
from typing import Any

from loraserve.adapters.registry import AdapterRecord
from loraserve.errors import HandlerError
from loraserve.serving.worker_process import WorkerReply


def registration_input(record: AdapterRecord) -> dict[str, Any]:
    """The Input a handler's register/update hook gets, shaped as DJL builds it:
    ``name`` and ``src`` as properties; ``preload``, ``pin`` and extra options as content."""
    content = [("preload", str(record.preload).lower().encode()),
               ("pin", str(record.pin).lower().encode())]
    content += [(k, str(v).encode()) for k, v in record.options.items()]
    properties = {"name": record.name, "alias": record.name, "src": record.path,
                  "version": str(record.version)}
    return {"properties": properties, "content": content}


def raise_for_reply(replies: list[WorkerReply], action: str) -> None:
    for reply in replies:
        if reply.output is not None and reply.output["code"] >= 400:
            body = b"".join(v for _, v in reply.output["content"]).decode("utf-8", "replace")
            detail = _error_detail(body) or reply.output["message"]
            raise HandlerError(f"{action} refused by the handler: {detail}",
                               status_code=reply.output["code"])


def handler_message(replies: list[WorkerReply]) -> str | None:
    """The message a handler set on its Output (DJL answers it as the status); None if unset."""
    output = replies[0].output if replies else None
    message = output.get("message") if output else None
    return message if message and message != "OK" else None


def _error_detail(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict):
        return str(parsed.get("error") or parsed.get("message") or body)
    return body
