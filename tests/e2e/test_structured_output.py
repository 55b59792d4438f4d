"""Structured output through the official ``openai`` client against a real server: the answer
follows ``response_format`` / ``structured_outputs`` even from a random tiny model, streamed or
not; what cannot be compiled or combined is a 400 that names it."""

from __future__ import annotations

import json
import re

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "integer", "minimum": 1, "maximum": 12},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["color", "size", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "describe the fox"}]
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "fox", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store, _ = make_engine_store(tmp_path_factory.mktemp("structured"))
    with ServerProcess(["--model-store", str(store)]) as server:
        yield openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")


def test_json_schema_response_validates(client):
    answer = client.chat.completions.create(
        model="qv", messages=MESSAGES, max_tokens=80, temperature=0, response_format=RESPONSE_FORMAT
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_schema_streamed_is_the_same_text(client):
    kwargs = {"model": "tiny", "messages": MESSAGES, "max_tokens": 80, "temperature": 0}
    whole = client.chat.completions.create(**kwargs, response_format=RESPONSE_FORMAT)
    stream = client.chat.completions.create(**kwargs, response_format=RESPONSE_FORMAT, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole.choices[0].message.content), SCHEMA)


def test_json_object_parses(client):
    answer = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=60, temperature=0, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(answer.choices[0].message.content), dict)


def test_completions_take_structured_outputs(client):
    regex = client.completions.create(
        model="tiny",
        prompt="the code is",
        max_tokens=20,
        temperature=0.8,
        seed=1,
        n=3,
        extra_body={"structured_outputs": {"regex": "[a-z]{3}-[0-9]{3}"}},
    )
    assert all(re.fullmatch("[a-z]{3}-[0-9]{3}", c.text) for c in regex.choices), regex.choices
    choice = client.completions.create(
        model="qv",
        prompt="is it",
        max_tokens=10,
        temperature=0,
        extra_body={"structured_outputs": {"choice": ["yes", "no", "not sure"]}},
    )
    assert choice.choices[0].text in ("yes", "no", "not sure")
    assert choice.choices[0].finish_reason == "stop"


def test_what_cannot_work_is_a_400_naming_it(client):
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    with pytest.raises(openai.BadRequestError, match="strin"):
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=5, response_format=bad_schema
        )
    with pytest.raises(openai.BadRequestError, match="regex"):
        client.completions.create(
            model="tiny", prompt="x", max_tokens=5, extra_body={"structured_outputs": {"regex": "[0-9"}}
        )
    with pytest.raises(openai.BadRequestError, match=r"response_format.*structured_outputs"):
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=5,
            response_format={"type": "json_object"},
            extra_body={"structured_outputs": {"choice": ["a"]}},
        )
