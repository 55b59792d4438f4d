"""Pure-Python pieces: registry state machine, pagination, batching, config, Input/Output."""

from __future__ import annotations

import pytest

from loraserve.adapters.registry import AdapterRecord, AdapterRegistry, AdapterState, paginate
from loraserve.api.request_input import parse_custom_attributes
from loraserve.config import ModelConfig, build_server_config, parse_properties
from loraserve.errors import AdapterNotFoundError, BadRequestError, ConfigError, ConflictError, HandlerError
from loraserve.handlers.io import Input, Output
from loraserve.serving.batching import batch_wire_inputs, split_batch_output


def test_registry_lifecycle():
    registry = AdapterRegistry()
    registry.begin_register(AdapterRecord(name="a", src="s", path="p"))
    with pytest.raises(AdapterNotFoundError):
        registry.ready("a")  # still registering
    with pytest.raises(ConflictError):
        registry.begin_register(AdapterRecord(name="a", src="s", path="p"))
    registry.finish_register("a")
    assert registry.ready("a").state is AdapterState.READY
    registry.begin_unregister("a")
    with pytest.raises(ConflictError):
        registry.begin_unregister("a")
    registry.finish_unregister("a")
    assert "a" not in registry


@pytest.mark.parametrize("name", ["", "a/b", "a\x01", "-lead", "x" * 129, "sp ace"])
def test_registry_refuses_bad_names(name):
    with pytest.raises(BadRequestError):
        AdapterRegistry().begin_register(AdapterRecord(name=name, src="s", path="p"))


@pytest.mark.parametrize(
    "limit,token,page,following",
    [
        (None, None, list(range(7)), None),
        (3, None, [0, 1, 2], "3"),
        (3, "6", [6], None),
        (3, "3", [3, 4, 5], "6"),
    ],
)
def test_paginate(limit, token, page, following):
    assert paginate(list(range(7)), limit, token) == (page, following)


def test_batch_round_trip():
    wire = batch_wire_inputs(
        [
            {"properties": {"adapter": "a1"}, "content": [("data", b"x")]},
            {"properties": {}, "content": [("data", b"y"), ("adapter", b"a2")]},
        ]
    )
    inputs = Input()
    inputs.properties.update(wire["properties"])
    for key, value in wire["content"]:
        inputs.content.add(key, value)
    first, second = inputs.get_batches()
    assert first.get_property("adapter") == "a1" and first.get_as_bytes() == b"x"
    assert second.get_as_string("adapter") == "a2" and second.get_as_bytes() == b"y"
    output = Output().add("one", batch_index=1).add("zero", batch_index=0)
    wire_out = {
        "code": 200,
        "message": "OK",
        "properties": {},
        "streaming": False,
        "content": list(output.content.items()),
    }
    split = split_batch_output(wire_out, 2)
    assert split[0]["content"] == [(None, b"zero")] and split[1]["content"] == [(None, b"one")]


def test_batch_output_by_position_and_mismatch():
    wire = {
        "code": 200,
        "message": "OK",
        "properties": {},
        "streaming": False,
        "content": [(None, b"a"), (None, b"b")],
    }
    assert [o["content"] for o in split_batch_output(wire, 2)] == [[(None, b"a")], [(None, b"b")]]
    with pytest.raises(HandlerError):
        split_batch_output(wire, 3)


def test_properties_and_model_config():
    props = parse_properties("# c\nengine=Python\noption.model_id = /m\nbatch_size: 4\ncustom=1\n")
    config = ModelConfig.from_properties(props)
    assert config.batch_size == 4 and config.options == {"model_id": "/m"}
    assert config.extra == {"custom": "1"}
    with pytest.raises(ConfigError, match="batch_size"):
        ModelConfig.from_properties({"batch_size": "many"})


def test_server_config_layers_and_errors():
    config = build_server_config([{"port": "1"}, {"port": "2", "host": "0.0.0.0"}])
    assert (config.port, config.host) == (2, "0.0.0.0")
    with pytest.raises(ConfigError, match="unknown setting"):
        build_server_config([{"colour": "red"}])
    with pytest.raises(ConfigError, match="port"):
        build_server_config([{"port": "eighty"}])


def test_input_output_djl_api():
    inputs = Input()
    inputs.properties["Content-Type"] = "application/json"
    inputs.content.add("data", b'{"a": 1}')
    assert inputs.get_property("content-type") == "application/json"
    assert inputs.get_data() == {"a": 1} and inputs.get_as_json() == {"a": 1}
    assert not inputs.is_batch() and inputs.get_batches() == [inputs]
    output = Output().error("bad", code=400)
    assert output.code == 400 and b'"error":"bad"' in output.content.value_at(0)  # DJL's JSON


def test_custom_attributes():
    assert parse_custom_attributes("adapter=a1; x = y ;junk") == {"adapter": "a1", "x": "y"}
    assert parse_custom_attributes(None) == {}
