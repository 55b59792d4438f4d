"""Turn an HTTP request into a handler Input (wire form), the way DJL does:
body → content ``data``; query parameters → content; headers → properties; SageMaker custom
attributes (``k=v; k2=v2``) → properties."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import Request

from loraserve.errors import BadRequestError, PayloadTooLargeError
from loraserve.specs.lmi import ADAPTER_IDENTIFIER

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"


def parse_custom_attributes(header: str | None) -> dict[str, str]:
    """``adapter=a1; trace=x`` → ``{"adapter": "a1", "trace": "x"}``."""
    if not header:
        return {}
    result: dict[str, str] = {}
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip():
            result[key.strip()] = value.strip()
    return result


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing more than ``limit`` bytes without buffering past it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def is_json(content_type: str | None) -> bool:
    return bool(content_type) and "json" in content_type.split(";")[0].lower()  # type: ignore[union-attr]


def parse_json_body(body: bytes, content_type: str | None) -> Any:
    """The decoded JSON body (None when it is not JSON); malformed JSON is a 400."""
    if not body or not is_json(content_type):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"malformed JSON body: {exc}") from None
    if b"\\ud" in body.lower():  # an escaped surrogate: only a complete pair is text
        try:
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestError(
                "the JSON body holds a lone surrogate (an unpaired \\ud800-\\udfff "
                "escape): not valid Unicode text"
            ) from None
    return parsed


# The server's own credentials: consumed by the access check, never handed to a user's handler
# (its model.py, and whatever it logs or calls, must not learn the server's token).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization"})


def build_wire_input(request: Request, body: bytes) -> dict[str, Any]:
    properties = {k.lower(): v for k, v in request.headers.items() if k.lower() not in CREDENTIAL_HEADERS}
    properties.update(parse_custom_attributes(request.headers.get(CUSTOM_ATTRIBUTES)))
    properties.setdefault("requestId", str(uuid.uuid4()))  # DJL adds one to every request
    content: list[tuple[str, bytes]] = [(k, v.encode("utf-8")) for k, v in request.query_params.items()]
    content.append(("data", body))
    return {"properties": properties, "content": content}


def refuse_handler_override(request: Request) -> None:
    """A request may not pick the handler function (``register_adapter`` …): DJL's 400."""
    attributes = parse_custom_attributes(request.headers.get(CUSTOM_ATTRIBUTES))
    if "handler" in request.headers or "handler" in {k.lower() for k in attributes}:
        raise BadRequestError("The handler can't be overridden in a request")


def content_adapter(request: Request) -> list[str]:
    """``?adapter=``: the content key DJL's server checks against the registered adapters."""
    return [request.query_params["adapter"]] if "adapter" in request.query_params else []


def requested_adapters(json_body: Any, request: Request) -> list[str]:
    """Adapter names a request asks for, as DJL's LMI parser reads them (the later source wins):
    the SageMaker ``X-Amzn-SageMaker-Adapter-Identifier`` header, else ``?adapter=``, else the
    body's ``adapters`` field; else the ``adapter`` custom attribute."""
    override = override_adapter(request)
    if override is not None:
        return [override]
    if isinstance(json_body, dict) and "adapters" in json_body:
        field = json_body["adapters"]
        if isinstance(field, str):
            return [field]
        if isinstance(field, list) and all(isinstance(a, str) for a in field):
            return list(field)
        raise BadRequestError('"adapters" must be a string or a list of strings ("" = base model)')
    adapter = fallback_adapter(request)
    return [adapter] if adapter else []


def override_adapter(request: Request) -> str | None:
    """The adapter named above the body, in DJL's LMI order: the SageMaker
    ``X-Amzn-SageMaker-Adapter-Identifier`` header, else ``?adapter=``."""
    if request.headers.get(ADAPTER_IDENTIFIER):
        return request.headers[ADAPTER_IDENTIFIER]
    return request.query_params.get("adapter")


def fallback_adapter(request: Request) -> str | None:
    """The adapter named below the body: the ``adapter`` custom attribute."""
    return parse_custom_attributes(request.headers.get(CUSTOM_ATTRIBUTES)).get("adapter") or None
