"""A user's handler speaks DJL: its Input arrives in wire form (a dict of properties and
content pairs) and its Output, ours or the real ``djl_python``'s, leaves the same way."""

from __future__ import annotations

from typing import Any

from loraserve.handlers.io import Input

HANDLER_FUNCTIONS = ("handle", "register_adapter", "update_adapter", "unregister_adapter")


def input_from_wire(wire: dict[str, Any]) -> Input:
    inputs = Input()
    inputs.properties.update(wire["properties"])
    for key, value in wire["content"]:
        inputs.content.add(key, value)
    inputs.function_name = inputs.properties.get("handler")
    return inputs


def output_to_wire(output: Any) -> dict[str, Any]:
    """Read any DJL-shaped Output by its attributes."""
    content = getattr(output, "content", None)
    pairs = [] if content is None else list(zip(content.keys, content.values))
    return {
        "code": int(getattr(output, "code", 200)),
        "message": str(getattr(output, "message", "OK")),
        "properties": {str(k): str(v) for k, v in getattr(output, "properties", {}).items()},
        "content": [(k, bytes(v)) for k, v in pairs],
        "streaming": getattr(output, "stream_content", None) is not None,
    }
