"""Adapter operations as each handler kind takes them: the built-in engine gets typed control
messages carrying the registry's identity; a user's handler gets DJL's Input for its hooks."""

from __future__ import annotations

import asyncio

import pytest

from loraserve.adapters.registry import AdapterRecord
from loraserve.errors import HandlerError
from loraserve.serving.adapter_calls import EngineAdapterCalls, HandlerAdapterCalls
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.control import ControlDone, RegisterAdapter, UnregisterAdapter
from loraserve.wire.frames import ReplyKind


class Broadcast:
    def __init__(self, reply: WorkerReply) -> None:
        self.reply, self.sent = reply, []

    async def __call__(self, fn, payload):
        self.sent.append((fn, payload))
        return [self.reply]


def test_the_engine_gets_typed_operations_with_the_registry_identity():
    send = Broadcast(WorkerReply(ReplyKind.CONTROL, ControlDone("Adapter a registered")))
    calls = EngineAdapterCalls(send)
    first = AdapterRecord(name="a", src="/s", path="/p", pin=True)
    second = AdapterRecord(name="a", src="/s", path="/p")  # the same name registered again
    assert asyncio.run(calls.register(first)) == "Adapter a registered"
    asyncio.run(calls.update(second))
    asyncio.run(calls.unregister("a"))
    (fn1, op1), (fn2, op2), (fn3, op3) = send.sent
    assert fn1 == fn2 == fn3 == "control"
    assert op1 == RegisterAdapter("a", "/p", first.identity, preload=True, pin=True)
    assert op2.identity == second.identity != first.identity  # minted by the registry, never reused
    assert op3 == UnregisterAdapter("a")


def test_a_user_handler_gets_djl_inputs_and_its_error_output_is_the_refusal():
    refusal = {"code": 400, "message": "Bad", "properties": {}, "content": [(None, b'{"error": "no"}')]}
    send = Broadcast(WorkerReply(ReplyKind.DJL, refusal))
    calls = HandlerAdapterCalls(send, lambda: ["register_adapter"])
    with pytest.raises(HandlerError, match="registering adapter a refused by the handler: no"):
        asyncio.run(calls.register(AdapterRecord(name="a", src="/s", path="/p")))
    fn, wire = send.sent[0]
    assert fn == "register_adapter" and wire["properties"]["name"] == "a"
    assert ("preload", b"true") in wire["content"]  # DJL's content form, as model.py reads it
    assert asyncio.run(calls.unregister("a", check=False)) is None  # undoing: a refusal is no error
