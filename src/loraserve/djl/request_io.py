"""DJL's parsed-request types (``djl_python.request_io``), the part custom formatters use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestInput:
    """What every parsed request carries; ``server_parameters`` are the handler's own copy."""

    request_id: int | None = None
    client_request_id: str | None = None
    output_formatter: Any = None
    parameters: dict = field(default_factory=dict)
    server_parameters: dict = field(default_factory=dict)
    tgi_compat: bool = False


@dataclass
class TextInput(RequestInput):
    """A text-generation request: the prompt(s), and the adapter(s) it asked for."""

    input_text: str | list[str] | None = None
    adapters: Any = None
    tokenizer: Any = None
