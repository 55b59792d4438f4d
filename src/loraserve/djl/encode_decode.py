"""DJL's ``encode_decode``: a request body to a Python value by content type, and back."""

from __future__ import annotations

import csv
import io
from typing import Any

from loraserve.djl.inputs import Input
from loraserve.djl.outputs import Output

_CSV_HEADERS = ("question", "context", "inputs")


def decode_csv(inputs: Input, require_headers: bool = True) -> Any:
    """CSV with a ``inputs`` / ``question`` / ``context`` header → ``{"inputs": ...}``;
    without headers (tabular models) → a float array, refusing non-numeric cells."""
    text = inputs.get_as_string()
    if not require_headers:
        import numpy as np

        values = np.genfromtxt(io.StringIO(text), delimiter=",")
        if np.isnan(values).any():
            raise ValueError("CSV contains non-numeric data. Please provide numeric data only.")
        return values
    header = text.splitlines()[0].lower() if text else ""
    if not any(name in header for name in _CSV_HEADERS):
        raise ValueError(
            "You need to provide the correct CSV with Header columns "
            "(inputs, or question and context) to use it with the default handler."
        )
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and "inputs" in rows[0]:
        return {"inputs": [row["inputs"] for row in rows]}
    return {"inputs": rows}


def encode_csv(content: Any) -> str:
    """Rows (dicts with the same keys) → CSV text with a header line."""
    rows = content if isinstance(content, list) else list(content)
    out = io.StringIO()
    writer = csv.DictWriter(out, rows[0].keys())
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def decode(
    inputs: Input, content_type: str | None, key: str | None = None, require_csv_headers: bool = True
) -> Any:
    """The request payload as DJL's built-in handlers read it; JSON when no type is given."""
    if not content_type:
        return inputs.get_as_json(key=key) if inputs.get_as_bytes(key=key) else {"inputs": ""}
    if "application/json" in content_type:
        return inputs.get_as_json(key=key)
    if "text/csv" in content_type:
        return decode_csv(inputs, require_headers=require_csv_headers)
    if "text/plain" in content_type:
        return {"inputs": [inputs.get_as_string(key=key)]}
    if content_type.startswith("image/"):
        return {"inputs": inputs.get_as_image(key=key)}
    if content_type.startswith("audio/"):
        return {"inputs": inputs.get_as_bytes(key=key)}
    if "tensor/npz" in content_type:
        return {"inputs": inputs.get_as_npz(key=key)}
    if content_type in ("tensor/ndlist", "application/x-npy"):
        return {"inputs": inputs.get_as_numpy(key=key)}
    if content_type == "application/x-www-form-urlencoded":
        return {"inputs": inputs.get_as_string(key=key)}
    return {"inputs": inputs.get_as_bytes(key=key)}  # application/octet-stream and the rest


def encode(outputs: Output, prediction: Any, content_type: str | None, key: str | None = None) -> None:
    """Add ``prediction`` to ``outputs`` in the requested type (JSON by default)."""
    if not content_type or "application/json" in content_type:
        outputs.add_as_json(prediction, key=key)
        outputs.add_property("Content-Type", "application/json")
    elif "text/csv" in content_type:
        outputs.add_as_string(encode_csv(prediction), key=key)
        outputs.add_property("Content-Type", "text/csv")
    elif "tensor/npz" in content_type:
        outputs.add_as_npz(prediction, key=key)
        outputs.add_property("Content-Type", "tensor/npz")
    else:
        outputs.add_as_numpy(prediction, key=key)
        outputs.add_property("Content-Type", "tensor/ndlist")
