"""DJL's ``Output``: what a handler returns: code, message, properties, content or a stream."""

from __future__ import annotations

import datetime
import io
import json
import logging
import struct
from collections.abc import Callable
from typing import Any

from loraserve.djl.np_util import to_nd_list
from loraserve.djl.pair_list import PairList
from loraserve.djl.properties import Properties

log = logging.getLogger("djl_python.outputs")


class _JSONEncoder(json.JSONEncoder):
    """numpy scalars and arrays and datetimes, which handlers return often."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime.datetime):
            return str(o)
        if type(o).__module__ == "numpy":
            return o.tolist()  # ndarray → nested lists; numpy scalar → int / float / bool
        return super().default(o)


def encode_json(value: Any) -> bytearray:
    """JSON as DJL's Output writes it: UTF-8, indented by 2, no space after ``,``."""
    text = json.dumps(
        value, ensure_ascii=False, allow_nan=False, indent=2, separators=(",", ":"), cls=_JSONEncoder
    )
    return bytearray(text.encode("utf-8"))


def _default_stream_output_formatter(item: Any) -> bytearray:
    """DJL's default stream framing: one ``{"outputs": item}`` JSON line per item."""
    return bytearray((json.dumps({"outputs": item}, cls=_JSONEncoder) + "\n").encode("utf-8"))


def _write_utf8(buffer: bytearray, value: str | None) -> None:
    if value is None:
        buffer += struct.pack(">i", -1)
        return
    data = value.encode("utf-8")
    buffer += struct.pack(">i", len(data)) + data


class Output:
    """A handler's answer; ``finalize`` registers work to run once the answer has been sent."""

    def __init__(self, code: int = 200, message: str = "OK") -> None:
        self.code = code
        self.message = message
        self.properties: dict[str, Any] = Properties()
        self.content = PairList()
        self.stream_content: Any = None
        self.stream_output_formatter: Callable[[Any], Any] | None = None
        self.finalize_function: Callable[..., Any] | None = None
        self.finalize_args: tuple = ()

    def __str__(self) -> str:
        content = {k: f"type: {type(v)}" for k, v in self.content.items()}
        return json.dumps(
            {
                "code": self.code,
                "message": self.message,
                "properties": dict(self.properties),
                "content": content,
            },
            indent=2,
        )

    def set_code(self, code: int) -> Output:
        self.code = code
        return self

    def set_message(self, message: str) -> Output:
        self.message = message
        return self

    def error(self, error: str, code: int = 424, message: str = "invoke handler failure") -> Output:
        """Turn this into DJL's error answer: the code, and a JSON body naming the error."""
        self.code, self.message = code, message
        self.add_property("content-type", "application/json")
        return self.add_as_json({"code": code, "message": message, "error": error})

    def add_property(self, key: str, val: Any) -> Output:
        self.properties[key] = val
        return self

    def get_properties(self) -> dict[str, Any]:
        return self.properties

    def get_property(self, key: str) -> Any:
        return self.properties.get(key)

    def add(self, value: Any, key: Any = None, batch_index: int | None = None) -> Output:
        """Strings become UTF-8, bytes stay, anything else is JSON-encoded."""
        if key is not None and not isinstance(key, str):
            log.warning("Output key should be str type, got %s", type(key))
            key = str(key)
        if batch_index is not None:
            key = f"batch_{batch_index}.{key or ''}"
        if isinstance(value, str):
            data = bytearray(value.encode("utf-8"))
        elif isinstance(value, (bytes, bytearray)):
            data = bytearray(value)
        else:
            data = encode_json(value)
        self.content.add(key=key, value=data)
        return self

    def add_as_string(self, value: str, key: Any = None, batch_index: int | None = None) -> Output:
        """Not in DJL's Output, though its ``encode_decode.encode`` calls it for CSV."""
        return self.add(str(value), key=key, batch_index=batch_index)

    def add_as_json(self, val: Any, key: Any = None, batch_index: int | None = None) -> Output:
        return self.add(encode_json(val), key=key, batch_index=batch_index)

    def add_as_numpy(self, np_list: Any, key: Any = None, batch_index: int | None = None) -> Output:
        """Arrays in DJL's ``tensor/ndlist`` encoding (what DJL's Java clients read)."""
        return self.add(to_nd_list(np_list), key=key, batch_index=batch_index)

    def add_as_npz(self, np_list: list, key: Any = None, batch_index: int | None = None) -> Output:
        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, *np_list)
        return self.add(buffer.getvalue(), key=key, batch_index=batch_index)

    def add_stream_content(
        self,
        stream_content: Any,
        output_formatter: Callable[[Any], Any] | None = _default_stream_output_formatter,
    ) -> Output:
        """Stream an iterator (sync or async); each item goes through ``output_formatter``
        (by default one ``{"outputs": item}`` JSON line; ``None`` sends items as they are)."""
        self.stream_content = stream_content
        self.stream_output_formatter = output_formatter
        return self

    def finalize(self, finalize_function: Callable[..., Any], *args: Any) -> Output:
        self.finalize_function, self.finalize_args = finalize_function, args
        return self

    def execute_finalize(self) -> Any:
        if self.finalize_function:
            return self.finalize_function(*self.finalize_args)
        return None

    @staticmethod
    def _encode_json(val: Any) -> bytearray:
        return encode_json(val)

    @staticmethod
    def write_utf8(msg: bytearray, val: str | None) -> None:
        _write_utf8(msg, val)

    @staticmethod
    def binary_encode(data: dict) -> bytearray:
        """A dict of strings in DJL's framing (int16 count, then int32-length UTF-8 pairs)."""
        msg = bytearray(struct.pack(">h", len(data)))
        for key, value in data.items():
            _write_utf8(msg, key)
            _write_utf8(msg, str(value))
        return msg


def binary_decode(binary: bytes | bytearray) -> dict[str, str | None]:
    """``Output.binary_encode`` bytes read back into a dict (a malformed one: ``struct.error``)."""
    count, pos = struct.unpack_from(">h", binary, 0)[0], 2
    result: dict[str, str | None] = {}
    for _ in range(count):
        pair = []
        for _ in range(2):
            length, pos = struct.unpack_from(">i", binary, pos)[0], pos + 4
            pair.append(None if length < 0 else bytes(binary[pos : pos + length]).decode("utf-8"))
            pos += max(length, 0)
        result[str(pair[0])] = pair[1]
    return result
