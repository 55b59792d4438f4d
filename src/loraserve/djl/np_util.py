"""DJL's ``tensor/ndlist`` encoding of a list of arrays (what DJL's Java NDList reads and writes).

Layout, big-endian: int32 array count; per array: the magic ``NDAR`` (int16 length + UTF-8),
int32 version 3, a name flag byte (1: a name string follows), the sparse format string, the
dtype string in upper case (``FLOAT32``), the shape (int32 rank, int64 per dimension, int32
layout length and one int16 char per axis), the byte order char, int32 data length, raw data.
``from_nd_list`` also reads ``.npz`` bytes (they start with ``PK``), as DJL's does.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Literal, TypeGuard, get_args

MAGIC_NUMBER = "NDAR"
VERSION = 3
# The one-character byte orders numpy reads: the order char of an array on the wire.
ByteOrder = Literal["S", "<", "L", ">", "B", "=", "N", "|", "I"]


def _pack_str(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack(">h", len(data)) + data


class _Reader:
    """A cursor over encoded bytes."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = memoryview(bytes(data))
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise ValueError("truncated tensor/ndlist data")
        chunk = self.data[self.pos : self.pos + size].tobytes()
        self.pos += size
        return chunk

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack(">h")).decode("utf-8")


def _is_byte_order(char: str) -> TypeGuard[ByteOrder]:
    return char in get_args(ByteOrder)


def to_nd_list(np_list: Any) -> bytearray:
    """Arrays (one array or a list of them) → DJL NDList bytes; data is written little-endian."""
    if not isinstance(np_list, list):
        np_list = [np_list]
    out = bytearray(struct.pack(">i", len(np_list)))
    for array in np_list:
        out += _pack_str(MAGIC_NUMBER) + struct.pack(">i", VERSION) + b"\x00"  # no name
        out += _pack_str("default") + _pack_str(str(array.dtype).upper())
        out += struct.pack(">i", array.ndim) + b"".join(struct.pack(">q", d) for d in array.shape)
        out += struct.pack(">i", array.ndim) + struct.pack(">h", ord("?")) * array.ndim
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes("C")
        out += b"<" + struct.pack(">i", len(data)) + data
    return out


def from_nd_list(encoded: bytes | bytearray) -> list:
    """DJL NDList bytes (or ``.npz`` bytes) → a list of numpy arrays."""
    import numpy as np

    if encoded[:2] == b"PK":
        with np.load(io.BytesIO(bytes(encoded)), allow_pickle=False) as npz:
            return [npz[name] for name in npz.files]
    reader = _Reader(encoded)
    arrays = []
    for _ in range(reader.unpack(">i")):
        magic = reader.string()
        if magic != MAGIC_NUMBER:
            raise AssertionError(f"magic number is not NDAR, actual {magic}")
        version = reader.unpack(">i")
        if version != VERSION:
            raise AssertionError(f"require version {VERSION}, actual {version}")
        if reader.unpack(">b") == 1:
            reader.string()  # the array's name
        reader.string()  # sparse format, always dense here
        name = reader.string().lower()
        dtype = np.dtype("bool" if name == "boolean" else name)  # Java's name for it
        shape = tuple(reader.unpack(">q") for _ in range(reader.unpack(">i")))
        reader.take(2 * reader.unpack(">i"))  # layout chars
        order = reader.take(1).decode("ascii")
        data = reader.take(reader.unpack(">i"))
        if not _is_byte_order(order):
            raise ValueError(f"byteorder not recognized (got {order!r})")  # as numpy says it
        array = np.frombuffer(bytearray(data), dtype=dtype.newbyteorder(order)).reshape(shape)
        arrays.append(array)
    return arrays
