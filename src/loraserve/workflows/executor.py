"""Evaluate a workflow for one request: variables are computed once each, branches run
concurrently, and values travel between steps as handler Inputs (wire form)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from loraserve.errors import HandlerError
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.frames import ReplyKind
from loraserve.workflows.spec import INPUT, WorkflowSpec

Wire = dict[str, Any]
Value: TypeAlias = "Wire | list[Value]"  # a step's result: one wire, or functionsApply's list
CallModel = Callable[[str, Wire], Awaitable[WorkerReply]]


async def reply_to_wire(reply: WorkerReply) -> Wire:
    """A model's Output becomes the next step's Input (streams are gathered first)."""
    output = reply.output
    if reply.kind is not ReplyKind.DJL:  # None, or typed (not a user handler's Output)
        raise HandlerError("a workflow step returned no output")
    content = [(k or "data", v) for k, v in output["content"]]
    if reply.stream is not None:
        chunks = []
        while (item := await reply.stream.get()) is not None:
            if isinstance(item, Exception):
                raise item
            chunks.append(item)
        content = [("data", b"".join(chunks))]
    if output["code"] >= 400:
        detail = b"".join(v for _, v in content).decode("utf-8", "replace")
        raise HandlerError(f"workflow step failed: {detail}", status_code=output["code"])
    return {"properties": dict(output["properties"]), "content": content, "code": output["code"]}


def _data(wire: Wire) -> Any:
    raw = next((v for k, v in wire["content"] if k == "data"), b"")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _one(value: Value) -> Wire:
    """``value`` where a step takes one wire; a list (``functionsApply``'s) is refused with
    the TypeError that using it as one would raise, but saying why."""
    if isinstance(value, list):
        raise TypeError(
            "a workflow step that takes one value was given a list (from functionsApply); "
            "merge it with ensemble first"
        )
    return value


def _merge(items: list[Value]) -> Wire:
    """Answers merged into one JSON list, in order."""
    merged = json.dumps([_data(_one(v)) for v in items]).encode()
    return {"properties": {"content-type": "application/json"}, "content": [("data", merged)]}


class WorkflowRun:
    def __init__(
        self, spec: WorkflowSpec, served: dict[str, str], call_model: CallModel, request: Wire
    ) -> None:
        self.spec, self.served, self.call_model = spec, served, call_model
        self.values: dict[str, asyncio.Future] = {}
        self.request = request

    async def output(self) -> Wire:
        result = await self.variable("out")
        return _merge(result) if isinstance(result, list) else result

    async def variable(self, name: str) -> Value:
        if name == INPUT:
            return self.request
        if name not in self.values:
            self.values[name] = asyncio.ensure_future(self.evaluate(self.spec.expressions[name]))
        return await self.values[name]

    async def evaluate(self, expression: Any) -> Value:
        if isinstance(expression, str):
            return await self.variable(expression)
        head, args = expression[0], expression[1:]
        if head == "adapter":
            ref = self.spec.adapters[args[0]]
            value = _one(await self.evaluate(args[1]))
            with_adapter = {**value, "content": [*value["content"], ("adapter", args[0].encode())]}
            return await self.call(ref.model, with_adapter)
        if head == "functionsApply":  # apply each named function/model to one input: a list
            given = await self.evaluate(args[1])
            return await asyncio.gather(*(self.apply(name, given) for name in args[0]))
        values = await asyncio.gather(*(self.evaluate(arg) for arg in args))
        if head == "ensemble":  # one list argument (DJL's form) or several values
            items = values[0] if len(values) == 1 and isinstance(values[0], list) else values
            return _merge(items)
        return await self.apply(head, values[0])

    async def apply(self, name: str, value: Value) -> Value:
        return value if name == "id" else await self.call(name, _one(value))

    async def call(self, local_model: str, value: Wire) -> Wire:
        wire = {"properties": value["properties"], "content": value["content"]}
        return await reply_to_wire(await self.call_model(self.served[local_model], wire))
