"""Framing between the front and a worker: length-prefixed pickled envelopes.

Both ends are loraserve's own code, started by the server, so pickle is safe here. Envelopes
(``op``): front → worker ``call`` (``payload``: a typed message for ``TYPED_FUNCTIONS``, else a DJL
Input in wire form for a user's handler) and ``cancel``; worker → front ``ready``,
``load_failed``, ``result`` (with its ``kind`` and ``streaming``), ``chunk``, ``end`` and
``error`` (``wire.errors``).
"""

from __future__ import annotations

import pickle
import struct
from enum import Enum
from typing import Any

HEADER = struct.Struct(">I")
# The built-in engine's typed entry points; every other function is a DJL hook taking an Input.
TYPED_FUNCTIONS = frozenset({"generate", "control"})


class ReplyKind(str, Enum):
    """What a ``result`` holds, said by the worker, so no reader guesses from its shape."""

    DJL = "djl"  # a user's handler answered: a DJL Output in wire form (its chunks are bytes)
    GENERATE = "generate"  # a GenerateResult, or, streaming, TokenOutput chunks
    CONTROL = "control"  # a ControlDone, EngineStats or Formatted (wire.control)
    NONE = "none"  # the handler returned nothing


def encode_frame(message: dict[str, Any]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> dict[str, Any]:
    return pickle.loads(payload)
