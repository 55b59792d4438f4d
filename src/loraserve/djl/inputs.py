"""DJL's ``Input``: one request (or a batch of them) as a handler sees it."""

from __future__ import annotations

import io
import json
from typing import Any

from loraserve.djl.np_util import from_nd_list
from loraserve.djl.pair_list import PairList
from loraserve.djl.properties import Properties

BATCH_PREFIX = "batch_"


class Input:
    """Properties (headers and the like, case-insensitive) and content pairs (body, query)."""

    def __init__(self) -> None:
        self.function_name: str | None = None
        self.properties: dict[str, Any] = Properties()
        self.content = PairList()

    def __str__(self) -> str:
        text = f"properties: {self.get_properties()}"
        for key in self.content.get_keys():
            text += f"\n{key}: {self.get_data(key)}"
        return text

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

    def get_properties(self) -> dict[str, Any]:
        return self.properties

    def get_content(self) -> PairList:
        return self.content

    def get_property(self, key: str) -> Any:
        """Case-insensitive, as HTTP header names are (also when ``properties`` is a plain dict)."""
        lowered = key.lower()
        return next((v for k, v in self.properties.items() if k.lower() == lowered), None)

    def contains_key(self, key: str) -> bool:
        return self.content.get(key) is not None

    def get_data(self, key: str | None = None) -> Any:
        """Decode the payload by its content-type, as DJL does."""
        content_type = self.get_property("content-type")
        if content_type == "tensor/ndlist":
            return self.get_as_numpy(key)
        if content_type == "tensor/npz":
            return self.get_as_npz(key)
        if content_type and content_type.startswith("application/json"):
            return self.get_as_json(key)
        if content_type and content_type.startswith("text/"):
            return self.get_as_string(key)
        if content_type and content_type.startswith("image/"):
            return self.get_as_image(key)
        if self.content.is_empty():
            return None
        return self.get_as_bytes(key=key)

    def get_as_bytes(self, key: str | None = None) -> Any:
        """The value for ``key``; by default ``data``, else the first pair. None when empty."""
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
        return bytes(self.get_as_bytes(key=key)).decode("utf-8")

    def get_as_json(self, key: str | None = None) -> Any:
        return json.loads(self.get_as_string(key=key))

    def get_as_image(self, key: str | None = None) -> Any:
        from PIL import Image  # optional, as in DJL

        return Image.open(io.BytesIO(self.get_as_bytes(key=key)))

    def get_as_numpy(self, key: str | None = None) -> list:
        """The payload in DJL's ``tensor/ndlist`` encoding (``.npz`` bytes are read too)."""
        return from_nd_list(self.get_as_bytes(key=key))

    def get_as_npz(self, key: str | None = None) -> list:
        import numpy as np

        with np.load(io.BytesIO(bytes(self.get_as_bytes(key=key))), allow_pickle=False) as npz:
            return [npz[name] for name in npz.files]

    def get_as_csv(self, key: str | None = None) -> list[dict[str, str]]:
        import csv

        return list(csv.DictReader(io.StringIO(self.get_as_string(key=key))))

    def is_empty(self) -> bool:
        return self.content.is_empty()
