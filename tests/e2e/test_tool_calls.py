"""Tool calling through the official ``openai`` client against a real server: the model's calls
parsed into ``tool_calls``, and ``tool_choice`` "required" / a named function enforced by the
grammar (a random tiny model obeys it), streamed and not."""

from __future__ import annotations

import json

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"enum": [1, 2, 3]}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "the forecast", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {
            "name": "time",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
]
ASK = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    properties = "option.max_lora_rank=8\noption.max_model_len=256\noption.tool_call_parser=hermes\n"
    store, _ = make_engine_store(tmp_path_factory.mktemp("tools"), properties)
    with ServerProcess(["--model-store", str(store)]) as server:
        yield openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")


def _schema(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "time"}}])
def test_a_required_call_is_made_and_its_arguments_follow_the_schema(client, choice):
    answer = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0
    )
    result = answer.choices[0]
    assert result.finish_reason == "tool_calls" and result.message.tool_calls
    for call in result.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), _schema(call.function.name))
    if isinstance(choice, dict):
        assert [c.function.name for c in result.message.tool_calls] == ["time"]
    stream = client.chat.completions.create(
        model="qv", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0, stream=True
    )
    calls, finish = [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), _schema(call.function.name))


def test_tool_turns_go_back_to_the_model_and_auto_may_answer_in_text(client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris", "days": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    answer = client.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, max_tokens=8, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_bad_tool_requests_are_refused_by_name(client):
    with pytest.raises(openai.BadRequestError, match="nope"):
        client.chat.completions.create(
            model="tiny",
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(model="tiny", messages=ASK, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="both constrain"):
        client.chat.completions.create(
            model="tiny",
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            response_format={"type": "json_object"},
        )
