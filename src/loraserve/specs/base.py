"""What every wire protocol shares: strict field types, parsing with a 400 that names the
field, and the pydantic schema in a form an OpenAPI document can hold."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraserve.errors import BadRequestError
from loraserve.wire import sampling
from loraserve.wire.sampling import Bound

# Strict everywhere: "false" is not a boolean, "0.5" is not a number, 8.0 is not an integer,
# NaN and Infinity are not numbers; integers must fit what the engine stores them in.
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
# And a field the model does not declare is refused by name, never silently dropped.
CLOSED = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


def within(bound: Bound, **kwargs: Any) -> Any:
    """A pydantic Field holding values to ``bound`` (``wire.sampling``: the engine's own)."""
    if bound.low_open:
        return Field(gt=bound.low, le=bound.high, **kwargs)
    return Field(ge=bound.low, le=bound.high, **kwargs)


MaxTokens = Annotated[int, within(sampling.MAX_TOKENS)]
Temperature = Annotated[float, within(sampling.TEMPERATURE)]
TopP = Annotated[float, within(sampling.TOP_P)]
TopK = Annotated[int, Field(ge=-1, le=sampling.TOP_K.high, description="0 or -1: no top-k filtering")]
RepetitionPenalty = Annotated[float, within(sampling.REPETITION_PENALTY)]
Seed = Annotated[int, within(sampling.SEED)]
OccurrencePenalty = Annotated[float, within(sampling.OCCURRENCE_PENALTY)]
TokenId = Annotated[int, within(sampling.TOKEN_ID)]
LogitBias = Annotated[float, within(sampling.LOGIT_BIAS)]
MinP = Annotated[float, within(sampling.MIN_P)]
TopLogprobs = Annotated[int, within(sampling.TOP_LOGPROBS)]
StopText = Annotated[str, Field(min_length=1, max_length=1000)]
Stop = StopText | Annotated[list[StopText], Field(max_length=32)]
MAX_PROMPTS = 1024  # prompts in one LMI request; each is one sequence

M = TypeVar("M", bound=BaseModel)
_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none)$|[\[-]")  # pydantic's union member tags


def parse(model: type[M], body: Any) -> M:
    """Validate ``body`` against ``model``; any problem is a 400 that names each field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise BadRequestError(f"invalid request: {describe(exc)}") from None


def describe(exc: ValidationError, limit: int = 5) -> str:
    """``parameters.do_sample: Input should be a valid boolean``; union members merged."""
    messages: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in error["loc"] if not _UNION_TAG.search(str(p))) or "body"
        text = error["msg"]
        if error["type"] in ("model_type", "dict_type"):
            text = "Input should be a JSON object"
        elif error["type"] == "extra_forbidden":
            text = "unknown field: this server does not implement it"
        if text not in messages.setdefault(path, []):
            messages[path].append(text)
    parts = [f"{path}: {' or '.join(texts)}" for path, texts in messages.items()]
    more = len(parts) - limit
    return "; ".join(parts[:limit]) + (f"; and {more} more" if more > 0 else "")


def openapi_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself (size limit, our own errors):
    the model's JSON schema, nested definitions inlined so the document stays self-contained."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": _inline(schema, definitions)}},
        }
    }


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {k: _inline(v, definitions) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, definitions) for v in node]
    return node


class TextPart(BaseModel):
    model_config = CLOSED
    type: Literal["text"] = Field("text", description="only text parts: the served models read text")
    text: str


class FunctionCall(BaseModel):
    model_config = CLOSED
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(description="a JSON object, as a string")


class MessageToolCall(BaseModel):
    """A call an earlier assistant turn made (sent back with the conversation)."""

    model_config = CLOSED
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One chat turn; OpenAI's list-of-text-parts content is joined into one string. Tool turns
    (an assistant's ``tool_calls``, a ``tool`` message's ``tool_call_id``) go to the template
    as transformers' chat templates read them (arguments as objects)."""

    model_config = CLOSED
    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=128)] | None = None
    tool_call_id: Annotated[str, Field(max_length=256)] | None = None
    refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        turn: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name is not None:
            turn["name"] = self.name
        if self.tool_call_id is not None:
            turn["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": _arguments(call.function.arguments),
                    },
                }
                for call in self.tool_calls
            ]
        return turn


def _arguments(text: str) -> Any:
    """A call's arguments as the object templates expect (the JSON string if it is not one)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


Messages = Annotated[list[ChatMessage], Field(min_length=1, max_length=1024)]


class AdapterScale(BaseModel):
    """One adapter of a request's mixture, with its scale (1: as trained, 0: the base model)."""

    model_config = CLOSED
    name: str = Field(min_length=1, max_length=128)
    scale: float = 1.0


AdapterMixture = Annotated[list[AdapterScale], Field(min_length=1, max_length=16)]


def mixture_of(entries: list[AdapterScale]) -> tuple[tuple[str, float], ...]:
    return tuple((entry.name, entry.scale) for entry in entries)
