"""Tool calls in a model's output, in the formats chat models are trained to write them.

``hermes`` (Hermes, Qwen2/2.5/3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
one block per call; ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``;
``llama3_json`` (Llama 3.1+): the whole answer is ``{"name": ..., "parameters": {...}}`` (an
optional ``<|python_tag|>`` first; several calls separated by ``;``). The format comes from
``option.tool_call_parser``, or from the model's chat template (the markers it writes).

Streaming: text is passed through until a call's opening marker appears; from there it is held
back, and the calls are parsed when the sequence ends. Text that does not parse as calls is
given back as content: a malformed call is never dropped.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from loraserve.errors import BadRequestError
from loraserve.wire.messages import ToolCall

FORMATS = ("hermes", "mistral", "llama3_json")
MAX_REQUIRED_CALLS = 4  # calls one answer may make under tool_choice "required"
COMPACT = {"x-guidance": {"whitespace_flexible": False}}  # JSON with free whitespace can run forever
_PYTHON_TAG = "<|python_tag|>"
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def detect_format(chat_template: str | None, configured: str | None) -> str | None:
    """``option.tool_call_parser`` if set, else the format the chat template writes, else None."""
    if configured and configured != "auto":
        if configured not in FORMATS:
            raise BadRequestError(
                f"option.tool_call_parser must be one of {', '.join(FORMATS)} or auto, got {configured!r}"
            )
        return configured
    template = chat_template or ""
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or "ipython" in template:
        return "llama3_json"
    return None


def opening(format_: str) -> str:
    """The text that starts a call in ``format_`` (llama3_json: the answer's first '{')."""
    return {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "llama3_json": "{"}[format_]


def parse(text: str, format_: str) -> tuple[str, list[ToolCall]]:
    """(content, calls) of a whole answer; no calls (and the text as content) when it holds
    none, or when what looks like calls does not parse."""
    try:
        if format_ == "hermes":
            return _hermes(text)
        if format_ == "mistral":
            return _mistral(text)
        return _llama3(text)
    except (ValueError, TypeError, KeyError):
        return text, []


def _call(entry: Any, arguments_key: str = "arguments") -> ToolCall:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ValueError("a call names its function")
    arguments = entry.get(arguments_key, entry.get("arguments", {}))
    if isinstance(arguments, str):
        json.loads(arguments)  # a JSON string already: it must parse
    else:
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", entry["name"], arguments)


def _hermes(text: str) -> tuple[str, list[ToolCall]]:
    blocks = _HERMES_BLOCK.findall(text)
    if not blocks:
        return text, []
    content = text[: text.index("<tool_call>")].strip()
    return content, [_call(json.loads(block)) for block in blocks]


def _mistral(text: str) -> tuple[str, list[ToolCall]]:
    if "[TOOL_CALLS]" not in text:
        return text, []
    content, _, rest = text.partition("[TOOL_CALLS]")
    entries = json.loads(rest.strip())
    entries = entries if isinstance(entries, list) else [entries]
    return content.strip(), [_call(entry) for entry in entries]


def _llama3(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    decoder, calls, position = json.JSONDecoder(), [], 0
    while position < len(body):
        entry, position = decoder.raw_decode(body, position)
        calls.append(_call(entry, "parameters"))
        position = len(body) - len(body[position:].lstrip().lstrip(";").lstrip())
    return "", calls


class ToolCallFilter:
    """Streams content until a call may have begun; holds the rest for ``finish``."""

    def __init__(self, format_: str) -> None:
        self.format, self.marker = format_, opening(format_)
        self.text = ""  # everything generated
        self.sent = 0  # characters of it passed on as content
        self.parsed: tuple[str, list[ToolCall]] | None = None  # set by finish()

    def feed(self, delta: str) -> str:
        """The part of ``delta`` that is surely content."""
        self.text += delta
        if self.format == "llama3_json":  # a call is the whole answer: decided by its start
            start = self.text.lstrip()
            if start.startswith(("{", _PYTHON_TAG)) or _PYTHON_TAG.startswith(start):
                return ""
            held = len(self.text)  # plain content: nothing to hold
        else:
            held = self._hold_from()
        out = self.text[self.sent : held]
        self.sent = max(self.sent, held)
        return out

    def _hold_from(self) -> int:
        """Where held-back text starts: the marker, or a tail that may be its beginning."""
        found = self.text.find(self.marker, self.sent)
        if found >= 0:
            return found
        for size in range(min(len(self.marker) - 1, len(self.text)), 0, -1):
            if self.marker.startswith(self.text[-size:]):
                return len(self.text) - size
        return len(self.text)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not yet sent, calls) at the end of the sequence; the whole answer's
        (content, calls) stay in ``parsed``."""
        self.parsed = parse(self.text, self.format)
        calls = self.parsed[1]
        if not calls:
            return self.text[self.sent :], []
        cut = self.sent if self.format == "llama3_json" else self.text.find(self.marker)
        return self.text[self.sent : max(cut, self.sent)].rstrip(), calls


def tool_grammar(tools: tuple[dict[str, Any], ...], name: str | None, format_: str) -> str:
    """An llguidance Lark grammar that admits only calls of ``tools`` (of ``name`` alone when
    given), written the way ``format_`` writes them: what ``tool_choice`` "required" or a named
    function enforces. Each call's arguments follow its function's ``parameters`` schema."""
    functions = [tool["function"] for tool in tools if name is None or tool["function"]["name"] == name]
    if not functions:
        raise BadRequestError(f"tool_choice names function {name!r}, which tools does not define")
    key = "parameters" if format_ == "llama3_json" else "arguments"
    calls = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"name": {"const": f["name"]}, key: f.get("parameters") or {"type": "object"}},
                "required": ["name", key],
                "additionalProperties": False,
            }
            for f in functions
        ]
    }
    if format_ == "mistral":
        most = 1 if name else MAX_REQUIRED_CALLS
        array = {**COMPACT, "type": "array", "items": calls, "minItems": 1, "maxItems": most}
        return f'start: "[TOOL_CALLS]" calls\ncalls: %json {json.dumps(array)}'
    call = json.dumps({**COMPACT, **calls})
    if format_ == "hermes":
        more = "" if name else ' ("\\n" block)?' * (MAX_REQUIRED_CALLS - 1)  # bounded: it must end
        return f'start: block{more}\nblock: "<tool_call>\\n" call "\\n</tool_call>"\ncall: %json {call}'
    return f"start: call\ncall: %json {call}"
