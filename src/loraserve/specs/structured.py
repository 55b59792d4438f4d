"""Structured output on the OpenAI routes: OpenAI's ``response_format`` (``json_object``,
``json_schema``) and vLLM's ``structured_outputs`` extension (``json``, ``regex``, ``grammar``,
``choice``, ``json_object``), parsed into the one ``OutputConstraint`` the engine enforces.

At most one constraint per request: two at once (``response_format`` and ``structured_outputs``,
or two keys of ``structured_outputs``) is a 400 naming both, never one silently winning.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from loraserve.constraints import MAX_CHOICES, MAX_TEXT, OutputConstraint
from loraserve.errors import BadRequestError
from loraserve.specs.base import CLOSED

Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``. The schema is enforced whatever ``strict`` says."""

    model_config = CLOSED
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, description="accepted; the schema alone decides the output")
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema the answer follows")
    strict: bool | None = Field(None, description="accepted; the schema is always enforced")


class ResponseFormat(BaseModel):
    model_config = CLOSED
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(None, description='required with type "json_schema"')

    def constraint(self) -> OutputConstraint | None:
        if (self.type == "json_schema") != (self.json_schema is not None):
            rule = 'goes with type "json_schema" only, and that type needs it'
            raise BadRequestError(f"response_format.json_schema {rule}")
        if self.json_schema is not None:
            return OutputConstraint.json_schema(self.json_schema.schema_)
        return OutputConstraint("json_object") if self.type == "json_object" else None


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs``: exactly one of its keys."""

    model_config = CLOSED
    json_: dict[str, Any] | Text | None = Field(None, alias="json", description="a JSON schema (or its text)")
    regex: Text | None = Field(None, description="the whole answer matches this regex")
    grammar: Text | None = Field(None, description="a Lark grammar (llguidance's dialect)")
    choice: Annotated[list[Text], Field(min_length=1, max_length=MAX_CHOICES)] | None = Field(
        None, description="the answer is one of these strings"
    )
    json_object: bool | None = Field(None, description="true: any JSON object")

    def constraint(self) -> OutputConstraint:
        given = [key for key in ("json", "regex", "grammar", "choice", "json_object") if self._value(key)]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            keys = "json, regex, grammar, choice, json_object"
            raise BadRequestError(f"structured_outputs takes exactly one of {keys}; got {got}")
        key = given[0]
        if key == "json":
            schema = self.json_
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as exc:
                    raise BadRequestError(f"structured_outputs.json is not valid JSON: {exc}") from None
            return OutputConstraint.json_schema(schema)  # type: ignore[arg-type]  # checked there
        if key == "choice":
            return OutputConstraint("choice", tuple(self.choice or ()))
        if key == "json_object":
            return OutputConstraint("json_object")
        return OutputConstraint(key, str(self._value(key)))

    def _value(self, key: str) -> Any:
        return self.json_ if key == "json" else getattr(self, key)


def request_constraint(
    response_format: ResponseFormat | None, structured_outputs: StructuredOutputs | None
) -> OutputConstraint | None:
    """The request's one constraint (None: free text)."""
    constraint = None if response_format is None else response_format.constraint()
    if structured_outputs is None:
        return constraint
    if constraint is not None:
        raise BadRequestError(
            f"response_format ({response_format.type}) and structured_outputs both constrain "  # type: ignore[union-attr]
            "the output; send one of them"
        )
    return structured_outputs.constraint()
