"""A structured-output constraint as it travels from the wire protocol to the engine: what kind
(JSON object, JSON schema, regex, Lark grammar, a choice of strings) and its text.

No torch and no llguidance here: the HTTP front builds it and pickles it to the worker, where
the engine compiles it (``engine/structured.py``). Checked on construction, like the other
request fields, so a malformed one is a 400 before anything is compiled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from loraserve.errors import BadRequestError

KINDS = ("json_object", "json_schema", "regex", "grammar", "choice")
MAX_TEXT = 64 * 1024  # characters of a schema, regex or grammar: bounds compile time and memory
MAX_CHOICES = 256


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """``kind`` and its ``value``: a JSON schema as JSON text, a regex, a Lark grammar (llguidance's
    dialect), the choices as a tuple of strings, or "" for any JSON object. Hashable: the engine
    caches compiled grammars by it."""

    kind: str
    value: str | tuple[str, ...] = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            kinds = ", ".join(KINDS)
            raise BadRequestError(f"structured output kind must be one of {kinds}, got {self.kind!r}")
        if self.kind == "choice":
            _check_choices(self.value)
        elif not isinstance(self.value, str) or len(self.value) > MAX_TEXT:
            rule = f"a string of at most {MAX_TEXT} characters"
            raise BadRequestError(f"the {self.kind} constraint must be {rule}")
        elif self.kind != "json_object" and not self.value:
            raise BadRequestError(f"the {self.kind} constraint is empty")
        if self.kind == "json_schema":
            _check_schema_text(self.value)  # type: ignore[arg-type]

    @classmethod
    def json_schema(cls, schema: dict | bool) -> OutputConstraint:
        """A schema given as parsed JSON. Its key order is kept: properties come out in the order
        the schema lists them, as OpenAI's do."""
        if not isinstance(schema, dict | bool):
            raise BadRequestError("a JSON schema must be an object (or true / false)")
        return cls("json_schema", json.dumps(schema))

    def describe(self) -> str:
        """How error messages name it."""
        return "response_format json_object" if self.kind == "json_object" else f"the {self.kind} constraint"


def _check_choices(value: object) -> None:
    choices = value if isinstance(value, tuple) else ()
    ok = 0 < len(choices) <= MAX_CHOICES and all(
        isinstance(c, str) and 0 < len(c) <= MAX_TEXT for c in choices
    )
    if not ok:
        raise BadRequestError(f"choice must be a list of 1 to {MAX_CHOICES} non-empty strings")


def _check_schema_text(text: str) -> None:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise BadRequestError(f"the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise BadRequestError("a JSON schema must be an object (or true / false)")
