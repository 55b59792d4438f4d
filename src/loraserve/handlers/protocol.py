"""Wire format between the front end and a worker process: length-prefixed pickled dicts.

Both ends are loraserve's own code, started by the server, so pickle is safe here.
Messages (``op``): front → worker ``call`` (``input``: a DJL Input in wire form, or
``message``: a typed message of ``handlers.messages``) and ``cancel``; worker → front
``ready``, ``load_failed``, ``result`` (with ``streaming``), ``chunk``, ``end``, ``error``
(with ``status`` when the handler refused the call with a typed error).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from loraserve.handlers.io import Input, Output

HEADER = struct.Struct(">I")
HANDLER_FUNCTIONS = ("handle", "register_adapter", "update_adapter", "unregister_adapter")


def encode_frame(message: dict[str, Any]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    return pickle.loads(payload)


def input_to_wire(inputs: Input) -> dict[str, Any]:
    return {"properties": dict(inputs.properties), "content": list(inputs.content.items())}


def input_from_wire(wire: dict[str, Any]) -> Input:
    inputs = Input()
    inputs.properties.update(wire["properties"])
    for key, value in wire["content"]:
        inputs.content.add(key, value)
    inputs.function_name = inputs.properties.get("handler")
    return inputs


def output_to_wire(output: Any) -> dict[str, Any]:
    """Read any DJL-shaped Output (ours or the real djl_python's) by its attributes."""
    content = getattr(output, "content", None)
    pairs = [] if content is None else list(zip(content.keys, content.values))
    return {
        "code": int(getattr(output, "code", 200)),
        "message": str(getattr(output, "message", "OK")),
        "properties": {str(k): str(v) for k, v in getattr(output, "properties", {}).items()},
        "content": [(k, bytes(v)) for k, v in pairs],
        "streaming": getattr(output, "stream_content", None) is not None,
    }


def output_from_wire(wire: dict[str, Any]) -> Output:
    output = Output(wire["code"], wire["message"])
    output.properties.update(wire["properties"])
    for key, value in wire["content"]:
        output.content.add(key, value)
    return output
