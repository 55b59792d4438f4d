"""Dynamic batching as DJL does it: several requests become one batched ``Input`` wire dict,
and the handler's one Output is split back into one reply per request."""

from __future__ import annotations

from typing import Any

from loraserve.errors import HandlerError


def batch_wire_inputs(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Prefix each request's properties/content keys with ``batch_NNN_``; add ``batch_size``."""
    properties: dict[str, str] = {"batch_size": str(len(inputs))}
    content: list[tuple[str, bytes]] = []
    for index, wire in enumerate(inputs):
        prefix = f"batch_{index:03d}_"
        properties.update({prefix + k: v for k, v in wire["properties"].items()})
        content.extend((prefix + (k or "data"), v) for k, v in wire["content"])
    return {"properties": properties, "content": content}


def _parse_batch_key(key: str | None) -> tuple[int, str | None] | None:
    """``batch_3.data`` → (3, "data"); anything else → None."""
    if not key or not key.startswith("batch_") or "." not in key:
        return None
    index, _, rest = key[6:].partition(".")
    if not index.isdigit():
        return None
    return int(index), (rest or None)


def split_batch_output(output: dict[str, Any] | None, size: int) -> list[dict[str, Any] | None]:
    """One wire Output per request: by ``batch_N.`` keys, else by position."""
    if output is None:
        return [None] * size
    if output.get("streaming"):
        if size == 1:
            return [output]
        raise HandlerError("the handler returned a stream for a batch of several requests")
    parts: list[list[tuple[str | None, bytes]]] = [[] for _ in range(size)]
    pairs = output["content"]
    keyed = [(_parse_batch_key(k), v) for k, v in pairs]
    if pairs and all(parsed is not None for parsed, _ in keyed):
        for (index, key), value in keyed:  # type: ignore[misc]
            if index >= size:
                raise HandlerError(f"the handler answered batch index {index} of a batch of {size}")
            parts[index].append((key, value))
    elif size == 1:
        parts[0] = list(pairs)
    elif len(pairs) == size:
        parts = [[pair] for pair in pairs]
    elif output["code"] >= 400:
        parts = [list(pairs) for _ in range(size)]  # one error for the whole batch
    else:
        raise HandlerError(f"the handler returned {len(pairs)} outputs for a batch of {size} requests")
    return [{**output, "content": part} for part in parts]
