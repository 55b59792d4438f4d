"""How an adapter operation reaches a model's workers, one class per handler kind: the built-in
engine gets typed control messages (``wire.control``) and raises its refusals; a user's handler
gets DJL's Input for its ``register_adapter`` / ``update_adapter`` / ``unregister_adapter`` hooks
and answers with a DJL Output, whose error code is its refusal."""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from loraserve.adapters.registry import AdapterRecord
from loraserve.djl.outputs import binary_decode
from loraserve.errors import HandlerError
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.control import ControlDone, RegisterAdapter, UnregisterAdapter
from loraserve.wire.frames import ReplyKind

Broadcast = Callable[[str, Any], Awaitable[list[WorkerReply]]]


class AdapterCalls(Protocol):
    """Each method returns the handler's status text (DJL answers it), or None; a refusal
    raises, named as ``<verb> adapter <name>``."""

    async def register(self, record: AdapterRecord, verb: str = "registering") -> str | None: ...

    async def update(self, record: AdapterRecord) -> str | None: ...

    async def unregister(self, name: str, check: bool = True) -> str | None:
        """``check`` False: a refusal is not an error (undoing a half-done registration)."""
        ...


class EngineAdapterCalls:
    """The built-in engine: a new version replaces the old (running requests keep theirs)."""

    def __init__(self, broadcast: Broadcast) -> None:
        self.broadcast = broadcast

    async def register(self, record: AdapterRecord, verb: str = "registering") -> str | None:
        op = RegisterAdapter(record.name, record.path, record.identity, record.preload, record.pin)
        done = _control_done(await self.broadcast("control", op))
        if done is not None:  # every worker loaded the same model.py: the first says what it defines
            record.has_custom_code, record.formatters = done.custom_code, done.formatters
        return done.message if done else None

    async def update(self, record: AdapterRecord) -> str | None:
        return await self.register(record)

    async def unregister(self, name: str, check: bool = True) -> str | None:
        done = _control_done(await self.broadcast("control", UnregisterAdapter(name)))
        return done.message if done else None


class HandlerAdapterCalls:
    """A user's handler, through the hooks it defines (``hooks``: those its worker reported)."""

    def __init__(self, broadcast: Broadcast, hooks: Callable[[], list[str]]) -> None:
        self.broadcast = broadcast
        self.hooks = hooks

    async def register(self, record: AdapterRecord, verb: str = "registering") -> str | None:
        replies = await self.broadcast("register_adapter", registration_input(record))
        return _checked(replies, f"{verb} adapter {record.name}")

    async def update(self, record: AdapterRecord) -> str | None:
        if "update_adapter" in self.hooks():
            replies = await self.broadcast("update_adapter", registration_input(record))
            return _checked(replies, f"updating adapter {record.name}")
        if "register_adapter" in self.hooks():  # no update hook: unregister, then register anew
            await self.broadcast("unregister_adapter", _unregistration(record.name))
            await self.register(record, "re-registering")  # DJL keeps no status text here
        return None

    async def unregister(self, name: str, check: bool = True) -> str | None:
        replies = await self.broadcast("unregister_adapter", _unregistration(name))
        return _checked(replies, f"unregistering adapter {name}") if check else None


def registration_input(record: AdapterRecord) -> dict[str, Any]:
    """The Input a handler's register/update hook gets, shaped as DJL builds it:
    ``name`` and ``src`` as properties; ``preload``, ``pin`` and extra options as content."""
    content = [("preload", str(record.preload).lower().encode()), ("pin", str(record.pin).lower().encode())]
    content += [(k, str(v).encode()) for k, v in record.options.items()]
    properties = {
        "name": record.name,
        "alias": record.name,
        "src": record.path,
        "version": str(record.version),
    }
    return {"properties": properties, "content": content}


def _unregistration(name: str) -> dict[str, Any]:
    return {"properties": {"name": name}, "content": []}


def _control_done(replies: list[WorkerReply]) -> ControlDone | None:
    """The engine's first ``ControlDone`` (its refusals were raised by the call)."""
    done: list[ControlDone] = [r.output for r in replies if r.kind is ReplyKind.CONTROL]
    return done[0] if done else None


def _checked(replies: list[WorkerReply], action: str) -> str | None:
    """Raise the first DJL error Output among ``replies``; else the message a handler set on its
    Output (DJL answers it as the status), None if unset."""
    for reply in replies:
        if reply.kind is not ReplyKind.DJL:
            continue
        output, answer = reply.output, _djl_answer(reply.output["content"])
        status = max(output["code"], int(answer.get("code") or 0) if str(answer.get("code")).isdigit() else 0)
        if status >= 400:
            body = b"".join(v for _, v in output["content"]).decode("utf-8", "replace")
            detail = answer.get("error") or _error_detail(body) or output["message"]
            raise HandlerError(f"{action} refused by the handler: {detail}", status_code=status)
    first = replies[0].output if replies and replies[0].kind is ReplyKind.DJL else None
    message = first.get("message") if first else None
    return message if message and message != "OK" else None


def _djl_answer(content: list[tuple[str, bytes]]) -> dict[str, str | None]:
    """An answer in DJL's ``Output.binary_encode`` framing (its adapter mixins answer
    ``{"code": 424, "error": ...}`` so, under a 200), read back; {} for any other body."""
    if len(content) != 1:
        return {}
    try:
        answer = binary_decode(content[0][1])
    except (struct.error, UnicodeDecodeError):
        return {}
    return answer if {"data", "code", "error"} & set(answer) else {}


def _error_detail(body: str) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict):
        return str(parsed.get("error") or parsed.get("message") or body)
    return body
