"""DJL's ``djl_python`` Input/Output API, so a DJL ``model.py`` runs unchanged on loraserve."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any


class PairList:
    """An ordered list of (key, value) pairs; keys may repeat, as DJL's content does."""

    def __init__(self, keys: list | None = None, values: list | None = None) -> None:
        self.keys: list[str | None] = list(keys or [])
        self.values: list[Any] = list(values or [])

    def add(self, key: str | None = None, value: Any = None, index: int | None = None) -> None:
        if index is None:
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys.insert(index, key)
            self.values.insert(index, value)

    def size(self) -> int:
        return len(self.keys)

    def is_empty(self) -> bool:
        return not self.keys

    def key_at(self, index: int) -> str | None:
        return self.keys[index]

    def value_at(self, index: int) -> Any:
        return self.values[index]

    def get_keys(self) -> list[str | None]:
        return self.keys

    def get_values(self) -> list[Any]:
        return self.values

    def get(self, key: str) -> Any:
        for k, v in zip(self.keys, self.values):
            if k == key:
                return v
        return None

    def items(self) -> Iterator[tuple[str | None, Any]]:
        return iter(zip(self.keys, self.values))


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return encode_json(value)


class _JSONEncoder(json.JSONEncoder):
    """Encode numpy scalars/arrays and datetimes the way DJL's Output does."""

    def default(self, o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "isoformat"):
            return str(o)
        return super().default(o)


def encode_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, cls=_JSONEncoder).encode("utf-8")


BATCH_PREFIX = "batch_"


class Input:
    """One request (or a batch of them) as a handler sees it: properties and content pairs."""

    def __init__(self) -> None:
        self.function_name: str | None = None
        self.properties: dict[str, str] = {}
        self.content = PairList()

    def __str__(self) -> str:
        return f"properties: {self.properties}, content keys: {self.content.get_keys()}"

    def is_batch(self) -> bool:
        return "batch_size" in self.properties

    def get_batch_size(self) -> int:
        return int(self.properties.get("batch_size", "1"))

    def get_batches(self) -> list[Input]:
        """Split a batched Input (keys ``batch_NNN_key``) into one Input per request."""
        if not self.is_batch():
            return [self]
        batch = [Input() for _ in range(self.get_batch_size())]
        for key, value in self.properties.items():
            if key.startswith(BATCH_PREFIX) and key != "batch_size":
                batch[int(key[6:9])].properties[key[10:]] = value
        for key, value in self.content.items():
            if key and key.startswith(BATCH_PREFIX):
                batch[int(key[6:9])].content.add(key[10:], value)
        return batch

    def get_function_name(self) -> str | None:
        return self.function_name

    def get_properties(self) -> dict[str, str]:
        return self.properties

    def get_content(self) -> PairList:
        return self.content

    def get_property(self, key: str) -> str | None:
        """Case-insensitive, as HTTP header names are."""
        lowered = key.lower()
        return next((v for k, v in self.properties.items() if k.lower() == lowered), None)

    def contains_key(self, key: str) -> bool:
        return self.content.get(key) is not None

    def get_data(self, key: str | None = None) -> Any:
        """Decode the payload by its content-type, as DJL does."""
        content_type = self.get_property("content-type") or ""
        if content_type == "tensor/ndlist":
            return self.get_as_numpy(key)
        if content_type == "tensor/npz":
            return self.get_as_npz(key)
        if content_type.startswith("application/json"):
            return self.get_as_json(key)
        if content_type.startswith("text/"):
            return self.get_as_string(key)
        if content_type.startswith("image/"):
            return self.get_as_image(key)
        if self.content.is_empty():
            return None
        return self.get_as_bytes(key)

    def get_as_bytes(self, key: str | None = None) -> bytes | None:
        """The value for ``key``; by default ``data``, else the first pair."""
        if self.content.is_empty():
            return None
        if key:
            value = self.content.get(key)
            if value is None:
                raise KeyError(f"requested data for key:{key} is not found!")
            return value
        value = self.content.get("data")
        return self.content.value_at(0) if value is None else value

    def get_as_string(self, key: str | None = None) -> str:
        return (self.get_as_bytes(key) or b"").decode("utf-8")

    def get_as_json(self, key: str | None = None) -> Any:
        return json.loads(self.get_as_string(key))

    def get_as_image(self, key: str | None = None) -> Any:
        from PIL import Image  # optional dependency, as in DJL

        return Image.open(io.BytesIO(self.get_as_bytes(key) or b""))

    def get_as_numpy(self, key: str | None = None) -> list:
        import numpy as np

        with np.load(io.BytesIO(self.get_as_bytes(key) or b""), allow_pickle=False) as npz:
            return [npz[name] for name in npz.files]

    def get_as_npz(self, key: str | None = None) -> list:
        return self.get_as_numpy(key)

    def get_as_csv(self, key: str | None = None) -> list[dict[str, str]]:
        import csv

        return list(csv.DictReader(io.StringIO(self.get_as_string(key))))

    def is_empty(self) -> bool:
        return self.content.is_empty()


class Output:
    """What a handler returns: code, message, properties, content pairs or a stream."""

    def __init__(self, code: int = 200, message: str = "OK") -> None:
        self.code = code
        self.message = message
        self.properties: dict[str, str] = {}
        self.content = PairList()
        self.stream_content: Any = None
        self.stream_formatter: Any = None

    def __str__(self) -> str:
        return f"Output(code={self.code}, message={self.message!r}, keys={self.content.keys})"

    def set_code(self, code: int) -> Output:
        self.code = code
        return self

    def set_message(self, message: str) -> Output:
        self.message = message
        return self

    def error(self, error: str, code: int = 424, message: str = "prediction failure") -> Output:
        self.code = code
        self.message = message
        self.add_property("content-type", "application/json")
        self.add_as_json({"code": code, "message": message, "error": error})
        return self

    def add_property(self, key: str, val: str) -> Output:
        self.properties[key] = val
        return self

    def add(self, value: Any, key: str | None = None, batch_index: int | None = None) -> Output:
        if key is not None and not isinstance(key, str):
            key = str(key)
        if batch_index is not None:
            key = f"{BATCH_PREFIX}{batch_index}.{key or ''}"
        self.content.add(key=key, value=_to_bytes(value))
        return self

    def add_as_json(self, val: Any, key: str | None = None, batch_index: int | None = None) -> Output:
        return self.add(encode_json(val), key=key, batch_index=batch_index)

    def add_as_numpy(self, np_list: list, key: str | None = None, batch_index: int | None = None) -> Output:
        return self.add_as_npz(np_list, key=key, batch_index=batch_index)

    def add_as_npz(self, np_list: list, key: str | None = None, batch_index: int | None = None) -> Output:
        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, *np_list)
        return self.add(buffer.getvalue(), key=key, batch_index=batch_index)

    def add_stream_content(self, stream: Any, output_formatter: Any = None) -> Output:
        """Stream ``stream`` (an iterator or async iterator) to the client chunk by chunk."""
        self.stream_content = stream
        self.stream_formatter = output_formatter
        return self
