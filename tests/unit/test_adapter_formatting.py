"""An adapter's own formatters on the built-in engine: the worker side (``AdapterCode``: load,
refuse, format, check), what a registration records, and which requests the front formats."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from djl_python import Output
from loraserve.adapters.registry import AdapterRecord, AdapterRegistry
from loraserve.api.adapter_formatting import formatting_of
from loraserve.errors import BadRequestError, HandlerError
from loraserve.handlers.adapter_code import AdapterCode, roles
from loraserve.serving.adapter_calls import EngineAdapterCalls, HandlerAdapterCalls
from loraserve.serving.worker_process import WorkerReply
from loraserve.wire.control import ControlDone
from loraserve.wire.frames import ReplyKind

CODE = """
from djl_python.input_parser import input_formatter, output_formatter

@input_formatter
def template(body, **kwargs):
    return {"inputs": "Q: " + body.pop("question"), **body}

@output_formatter
def wrap(response):
    return {"answer": response["generated_text"]} if "generated_text" in response else {1, 2}
"""


def adapter(tmp_path: Path, code: str) -> str:
    (tmp_path / "model.py").write_text(code)
    return str(tmp_path)


def test_the_worker_formats_with_the_installed_code_only(tmp_path):
    code = AdapterCode()
    handler = code.load("a", adapter(tmp_path, CODE), "id1")
    assert roles(handler) == ("input_formatter", "output_formatter")
    assert code.format_input("a", {"question": "x"}) == {"question": "x"}  # loaded, not installed
    code.install("a", handler)
    assert code.format_input("a", {"question": "x", "parameters": {}}) == {"inputs": "Q: x", "parameters": {}}
    assert code.format_output("a", {"generated_text": "y"}) == {"answer": "y"}
    code.install("a", None)
    assert handler.input_formatter is None and code.format_output("a", 1) == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.format_input("a", {"no question": 1}), "adapter a's input formatter failed: KeyError"),
        (lambda c: c.format_output("a", {}), "adapter a's output formatter returned no JSON data"),
    ],
)
def test_a_failing_formatter_is_a_424_naming_the_adapter(tmp_path, call, match):
    code = AdapterCode()
    code.install("a", code.load("a", adapter(tmp_path, CODE), "id1"))
    with pytest.raises(HandlerError, match=match) as raised:
        call(code)
    assert raised.value.status_code == 424


@pytest.mark.parametrize(
    ("source", "match"),
    [("def f(:\n", "its model.py could not be loaded"), ("def input_fn(d, t):\n    pass\n", "SageMaker")],
)
def test_code_the_engine_cannot_use_refuses_the_registration(tmp_path, source, match):
    with pytest.raises(HandlerError, match=match):
        AdapterCode().load("a", adapter(tmp_path, source), "id1")


def test_a_registration_records_what_the_workers_loaded():
    done = ControlDone("Adapter a registered", ("input_formatter",), custom_code=True)
    calls = EngineAdapterCalls(lambda fn, op: _replies(WorkerReply(ReplyKind.CONTROL, done)))
    record = AdapterRecord(name="a", src="/s", path="/p")
    asyncio.run(calls.register(record))
    assert (
        record.describe() | {"has_custom_code": True, "formatters": ["input_formatter"]} == record.describe()
    )


def test_djls_encoded_refusal_under_a_200_refuses_the_registration():
    refusal = Output().add(Output.binary_encode({"data": "", "code": 424, "error": "broken"}), key="data")
    wire = {
        "code": 200,
        "message": "OK",
        "properties": {},
        "content": [("data", bytes(refusal.content.get("data")))],
    }
    calls = HandlerAdapterCalls(lambda fn, op: _replies(WorkerReply(ReplyKind.DJL, wire)), lambda: [])
    with pytest.raises(HandlerError, match="refused by the handler: broken") as raised:
        asyncio.run(calls.register(AdapterRecord(name="a", src="/s", path="/p")))
    assert raised.value.status_code == 424


async def _replies(reply: WorkerReply) -> list[WorkerReply]:
    return [reply]


def _request(headers: dict | None = None, query: dict | None = None):
    return SimpleNamespace(headers=headers or {}, query_params=query or {})


def test_the_front_formats_requests_naming_one_adapter_with_code():
    registry = AdapterRegistry()
    for name, formatters in (("f", ("input_formatter",)), ("plain", ())):
        registry.begin_register(AdapterRecord(name=name, src="/s", path="/p", formatters=formatters))
    model = SimpleNamespace(registry=registry)
    assert formatting_of(model, {"inputs": "x", "adapters": "plain"}, _request()) is None  # type: ignore[arg-type]
    assert formatting_of(model, {"adapters": "f"}, _request()).adapter == "f"  # type: ignore[arg-type, union-attr]
    assert formatting_of(model, {"adapters": "plain"}, _request(query={"adapter": "f"})) is not None  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match="adapter f has its own formatters"):
        formatting_of(model, {"inputs": ["x", "y"], "adapters": ["f", "plain"]}, _request())  # type: ignore[arg-type]
    with pytest.raises(BadRequestError):
        formatting_of(model, {"adapters": [{"name": "f", "scale": 0.5}, {"name": "plain"}]}, _request())  # type: ignore[arg-type]
