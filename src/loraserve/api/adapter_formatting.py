"""An adapter's own formatters (its ``model.py``, DJL's ``AdapterFormatterMixin``) on LMI
requests to the built-in engine. They run in the worker that loaded them, never here: this
module only decides whether a request is formatted and asks the worker.

As in DJL's LMI handlers, the adapter is chosen before the input formatter runs (the SageMaker
adapter header, ``?adapter=``, the body's ``adapters``, the ``adapter`` custom attribute) and
the formatter cannot change it; it gets the decoded JSON body without ``adapters`` and returns
the LMI request to run. The output formatter gets the LMI response this server would have sent
(``{"generated_text": ...}``, its list form, or the chat completion) and its return value is the
response body (a string is sent as text). A request names one such adapter alone; a stream
through an output formatter is refused (400): DJL formats the raw chunks of its engine, which
this engine does not expose, and skipping the formatter would silently answer unformatted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from loraserve.api.generation import cancel_on_disconnect
from loraserve.api.request_input import fallback_adapter, override_adapter
from loraserve.errors import BadRequestError
from loraserve.serving.model_service import ModelService
from loraserve.wire.control import FormatInput, FormatOutput


@dataclass(frozen=True, slots=True)
class Formatting:
    """The adapter whose formatters apply to this request, and which of them it has."""

    adapter: str
    formatters: tuple[str, ...]

    @property
    def formats_output(self) -> bool:
        return "output_formatter" in self.formatters


def _named(body: Any, request: Request) -> list[str]:
    """Every adapter name the request gives, in the order LMI reads them (mixtures included)."""
    override = override_adapter(request)
    field = body.get("adapters") if isinstance(body, dict) else None
    if override is not None:
        return [override]
    if field is None:
        fallback = fallback_adapter(request)
        return [fallback] if fallback else []
    entries = field if isinstance(field, list) else [field]
    return [str(e.get("name")) if isinstance(e, dict) else str(e) for e in entries]


def formatting_of(model: ModelService, body: Any, request: Request) -> Formatting | None:
    """The formatting adapter the request names, or None; naming it beside others is a 400."""
    names = _named(body, request)
    coded = [n for n in dict.fromkeys(names) if n in model.registry and model.registry.get(n).formatters]
    if not coded:
        return None
    if set(names) != {coded[0]}:
        raise BadRequestError(
            f"adapter {coded[0]} has its own formatters (a model.py): name it alone, "
            "one adapter for the whole request"
        )
    return Formatting(coded[0], model.registry.get(coded[0]).formatters)


async def _run(request: Request, model: ModelService, op: FormatInput | FormatOutput) -> Any:
    reply = await cancel_on_disconnect(request, model.workers.submit(op, "control"))
    return reply.output.value


async def formatted_body(request: Request, model: ModelService, body: Any) -> tuple[Any, Formatting | None]:
    """The body to parse as LMI: the input formatter's result where the adapter has one."""
    formatting = formatting_of(model, body, request)
    if formatting is None or "input_formatter" not in formatting.formatters:
        return body, formatting
    named_in_body = isinstance(body, dict) and "adapters" in body
    given = {k: v for k, v in body.items() if k != "adapters"} if isinstance(body, dict) else body
    result = await _run(request, model, FormatInput(formatting.adapter, given))
    result.pop("adapters", None)  # chosen before formatting: the formatter cannot change it
    return result | ({"adapters": body["adapters"]} if named_in_body else {}), formatting


def refuse_formatted_stream(formatting: Formatting | None, stream: bool) -> None:
    if stream and formatting is not None and formatting.formats_output:
        raise BadRequestError(
            f"adapter {formatting.adapter} has an output formatter (its model.py), which formats "
            'a whole response: streaming is not available through it; send "stream": false'
        )


async def formatted_response(
    request: Request, model: ModelService, formatting: Formatting | None, response: Any, headers: dict
) -> Response:
    """The LMI response, through the adapter's output formatter where it has one."""
    if formatting is not None and formatting.formats_output:
        response = await _run(request, model, FormatOutput(formatting.adapter, response))
        if isinstance(response, str):
            return PlainTextResponse(response, headers=headers)
    return JSONResponse(response, headers=headers)
