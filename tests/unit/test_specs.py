"""LMI and OpenAI requests parsed at the edge: strict types, finite numbers, ranges, a 400 that
names the field; and the typed request each one becomes."""

from __future__ import annotations

import json
import math
import re

import pytest

from loraserve.errors import BadRequestError
from loraserve.specs import lmi
from loraserve.specs import openai as oai
from loraserve.specs.base import parse
from loraserve.wire.messages import (
    FinishReason,
    GenerateRequest,
    GenerateResult,
    SamplingSpec,
    SequenceOutput,
    TokenOutput,
    finite_or_none,
)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": 5}, "inputs"),
        ({"inputs": ["a", 3]}, "inputs"),
        ({}, "body"),
        ([], "body"),
        (None, "body"),
        ({"inputs": "x", "messages": [{"role": "user", "content": "y"}]}, "body"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"inputs": "x", "stream": "false"}, "stream"),
        ({"inputs": "x", "parameters": {"do_sample": "false"}}, "parameters.do_sample"),
        ({"inputs": "x", "parameters": {"do_sample": 0}}, "parameters.do_sample"),
        ({"inputs": "x", "parameters": {"ignore_eos": "false"}}, "parameters.ignore_eos"),
        ({"inputs": "x", "parameters": {"details": "true"}}, "parameters.details"),
        ({"inputs": "x", "parameters": {"seed": 2**70}}, "parameters.seed"),
        ({"inputs": "x", "parameters": {"seed": -1}}, "parameters.seed"),
        ({"inputs": "x", "parameters": {"max_new_tokens": math.inf}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 8.5}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": "many"}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": "Infinity"}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 1e30}}, "parameters.max_new_tokens"),
        ({"inputs": "x", "parameters": {"temperature": math.nan}}, "parameters.temperature"),
        ({"inputs": "x", "parameters": {"temperature": -0.5}}, "parameters.temperature"),
        ({"inputs": "x", "parameters": {"temperature": "hot"}}, "parameters.temperature"),
        ({"inputs": "x", "parameters": {"temperature": "NaN", "do_sample": True}}, "parameters.temperature"),
        ({"inputs": "x", "parameters": {"top_p": 3}}, "parameters.top_p"),
        ({"inputs": "x", "parameters": {"top_p": 0}}, "parameters.top_p"),
        ({"inputs": "x", "parameters": {"top_k": -5}}, "parameters.top_k"),
        ({"inputs": "x", "parameters": {"top_k": "many"}}, "parameters.top_k"),
        ({"inputs": "x", "parameters": {"repetition_penalty": 1e-40}}, "parameters.repetition_penalty"),
        ({"inputs": "x", "parameters": {"repetition_penalty": math.inf}}, "parameters.repetition_penalty"),
        ({"inputs": "x", "parameters": {"stop_sequences": [""]}}, "parameters.stop_sequences"),
        ({"inputs": "x", "parameters": []}, "parameters"),
        ({"inputs": "x", "adapters": 3}, "adapters"),
    ],
)
def test_lmi_refuses_with_the_field_named(body, field):
    with pytest.raises(BadRequestError) as caught:
        parse(lmi.LmiRequest, body)
    assert caught.value.status_code == 400
    assert f"{field}:" in caught.value.message


def test_lmi_json_constants_from_a_real_body_are_refused():
    """Python's json module reads NaN and Infinity; they must still be a 400."""
    body = json.loads('{"inputs": "x", "parameters": {"max_new_tokens": Infinity, "temperature": NaN}}')
    with pytest.raises(BadRequestError, match=r"max_new_tokens.*temperature"):
        parse(lmi.LmiRequest, body)


@pytest.mark.parametrize(
    "parameters,expected",
    [
        ({}, {"max_new_tokens": 30, "do_sample": False, "temperature": 1.0, "top_k": 0}),
        ({"temperature": 0.7}, {"do_sample": True, "temperature": 0.7}),
        ({"temperature": 0.7, "do_sample": False}, {"do_sample": False}),
        ({"do_sample": True}, {"do_sample": True, "temperature": 1.0}),
        ({"max_new_tokens": 5, "top_k": 0}, {"max_new_tokens": 5, "do_sample": False, "top_k": 0}),
        ({"max_tokens": 5}, {"max_new_tokens": 5}),
        ({"top_k": -1, "top_p": 0.9, "seed": 7}, {"top_k": 0, "top_p": 0.9, "seed": 7}),
        ({"stop_sequences": "x"}, {"stop": ("x",)}),
        ({"stop": ["a", "b"], "ignore_eos": True}, {"stop": ("a", "b"), "ignore_eos": True}),
        (
            {"presence_penalty": 0.5, "frequency_penalty": -0.5, "min_p": 0.1, "min_tokens": 2},
            {"presence_penalty": 0.5, "frequency_penalty": -0.5, "min_p": 0.1, "min_tokens": 2},
        ),
        (
            {"return_full_text": False, "decoder_input_details": False, "top_n_tokens": 0},
            {"max_new_tokens": 30},
        ),
    ],
)
def test_lmi_parameters_become_a_sampling_spec(parameters, expected):
    spec = parse(lmi.LmiRequest, {"inputs": "x", "parameters": parameters}).parameters.sampling()
    assert {k: getattr(spec, k) for k in expected} == expected


@pytest.mark.parametrize(
    "body,named",
    [
        ({"inputs": "x", "parameters": {"unknown_lmi_option": 1}}, "parameters.unknown_lmi_option"),
        ({"inputs": "x", "parameters": {"return_full_text": True}}, "parameters.return_full_text"),
        ({"inputs": "x", "parameters": {"top_n_tokens": 5}}, "parameters.top_n_tokens"),
        ({"inputs": "x", "adapter": "shouty"}, "adapter: unknown field"),  # "adapters", misspelt
        ({"inputs": "x", "max_tokens": 5}, "max_tokens: unknown field"),  # belongs in parameters
    ],
)
def test_lmi_fields_this_engine_does_not_serve_are_refused_by_name(body, named):
    """A 200 from the base model, or without what was asked for, would look like it worked."""
    with pytest.raises(BadRequestError, match=re.escape(named)):
        parse(lmi.LmiRequest, body)


@pytest.mark.parametrize(
    "body,fallback,adapters",
    [
        ({"inputs": "x"}, None, (None,)),
        ({"inputs": "x"}, "q", ("q",)),
        ({"inputs": "x", "adapters": "a"}, "q", ("a",)),
        ({"inputs": ["x", "y"], "adapters": ["", "a"]}, None, (None, "a")),
        ({"inputs": ["x", "y"], "adapters": "a"}, None, ("a", "a")),
        ({"messages": [{"role": "user", "content": "hi"}], "adapters": "a"}, None, ("a",)),
    ],
)
def test_lmi_adapters_one_per_sequence(body, fallback, adapters):
    assert lmi.to_generate(parse(lmi.LmiRequest, body), fallback).adapters == adapters


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"inputs": ["x", "y"], "adapters": ["a"]}, "1 entries for 2 inputs"),
        ({"inputs": ["x", "y"], "stream": True}, "one input at a time"),
    ],
)
def test_lmi_request_level_refusals(body, fragment):
    with pytest.raises(BadRequestError, match=fragment):
        lmi.to_generate(parse(lmi.LmiRequest, body))


def test_lmi_chat_content_parts_are_joined():
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        ]
    }
    message = lmi.to_generate(parse(lmi.LmiRequest, body))
    assert message.messages == ({"role": "user", "content": "ab"},) and message.sequences == 1


@pytest.mark.parametrize(
    "body,field",
    [
        ({"model": "m", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "m", "prompt": "x", "temperature": 2.5e300}, "temperature"),
        ({"model": "m", "prompt": "x", "n": 0}, "n"),
        ({"model": "m", "prompt": "x", "frobnicate": 1}, "frobnicate"),
        ({"model": "m", "prompt": "x", "logprobs": 21}, "logprobs"),
        ({"model": "m", "prompt": [1, "a"]}, "prompt"),
        ({"model": "m", "prompt": "x", "stream": "true"}, "stream"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "prompt": 3}, "prompt"),
        ({"model": "", "prompt": "x"}, "model"),
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": "x", "seed": 2**70}, "seed"),
        ({"model": "m", "prompt": "x", "ignore_eos": "false"}, "ignore_eos"),
    ],
)
def test_openai_completion_refuses_with_the_field_named(body, field):
    with pytest.raises(BadRequestError) as caught:
        parse(oai.CompletionRequest, body)
    assert f"{field}:" in caught.value.message


def test_openai_chat_requires_messages_and_maps_sampling():
    with pytest.raises(BadRequestError, match="messages:"):
        parse(oai.ChatCompletionRequest, {"model": "m", "messages": "hi"})
    chat = parse(
        oai.ChatCompletionRequest,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 4,
            "stop": ".",
        },
    )
    message = chat.to_generate("qv")
    assert message.adapters == ("qv",) and message.sampling.max_new_tokens == 4
    assert message.sampling.do_sample and message.sampling.stop == (".",)  # OpenAI: temperature 1
    greedy = parse(oai.CompletionRequest, {"model": "m", "prompt": "x", "temperature": 0}).to_generate(None)
    assert not greedy.sampling.do_sample and greedy.sampling.max_new_tokens == 16


def _result(logprob: float) -> GenerateResult:
    token = TokenOutput(0, 5, "a", finite_or_none(logprob))
    seq = SequenceOutput("a", FinishReason.LENGTH, prompt_tokens=3, generated_tokens=1, tokens=(token,))
    return GenerateResult((seq,), peak_batch=1)


@pytest.mark.parametrize("logprob", [math.nan, math.inf, -math.inf])
def test_non_finite_logprobs_are_null_in_json(logprob):
    request = parse(lmi.LmiRequest, {"inputs": ["x"], "parameters": {"details": True}})
    result = _result(logprob)
    text = json.dumps(lmi.response_json(request, result), allow_nan=False)
    assert json.loads(text)[0]["details"]["tokens"][0]["log_prob"] is None
    last = TokenOutput(0, 5, "a", finite_or_none(logprob), FinishReason.LENGTH, result.sequences[0])
    assert json.loads(lmi.stream_line(last, details=True))["token"]["log_prob"] is None


def test_finish_reasons_in_openai_terms():
    assert [r.openai for r in FinishReason] == ["length", "stop", "stop", "stop", "stop"]
    meta = {"id": "x", "created": 0, "model": "m"}
    answer = oai.response_json(_result(-1.0), meta, False, GenerateRequest(SamplingSpec(), prompts=("x",)))
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}


@pytest.mark.parametrize(
    "path,required",
    [
        ("/invocations", "oneOf"),
        ("/predictions/{model_name}", "oneOf"),
        ("/v1/completions", "prompt"),
        ("/v1/chat/completions", "messages"),
    ],
)
def test_openapi_declares_the_request_bodies(path, required):
    from loraserve.api.app import create_app
    from loraserve.config import ServerConfig

    body = create_app(ServerConfig()).openapi()["paths"][path]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert required in schema or required in schema.get("required", [])
    assert "$ref" not in json.dumps(schema)  # self-contained: nested models inlined
    if path.startswith("/v1"):
        assert schema["properties"]["temperature"]["anyOf"][0]["type"] == "number"
    else:
        parameters = schema["properties"]["parameters"]["properties"]
        assert parameters["do_sample"]["anyOf"][0]["type"] == "boolean"


@pytest.mark.parametrize(
    "body,named",
    [
        ({"suffix": "end"}, "suffix"),
        ({"max_tokens": 0}, "echo"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 3, "stream": True}, "best_of"),
        ({"echo": True, "stream": True}, "echo"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"logit_bias": {"abc": 1.0}}, "logit_bias"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
    ],
)
def test_openai_completion_fields_refused_by_name_after_parsing(body, named):
    parsed = parse(oai.CompletionRequest, {"model": "m", "prompt": "x", **body})
    with pytest.raises(BadRequestError, match=named):
        parsed.to_generate(None)


@pytest.mark.parametrize(
    "body,named",
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}, "structured_outputs": {"choice": ["a"]}}, "both"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"stream": True, "stream_options": {"include_obfuscation": True}}, "include_obfuscation"),
    ],
)
def test_openai_chat_fields_refused_by_name(body, named):
    parsed = parse(
        oai.ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    )
    with pytest.raises(BadRequestError, match=named):
        parsed.to_generate(None)


def test_openai_neutral_values_of_refused_fields_and_metadata_fields_pass():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "store": False,
        "modalities": ["text"],
        "user": "u",
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "prompt_cache_key": "k",
        "parallel_tool_calls": True,
        "logprobs": True,
        "top_logprobs": 2,
        "presence_penalty": 0.5,
        "logit_bias": {"5": -100},
    }
    message = parse(oai.ChatCompletionRequest, body).to_generate(None)
    assert message.top_logprobs == 2 and message.sampling.logit_bias == ((5, -100.0),)
    assert message.sampling.max_new_tokens is None  # chat: what the context leaves
    assert message.sampling.presence_penalty == 0.5


def test_openai_completion_prompts_as_text_lists_and_token_ids():
    def prompts(prompt):
        return parse(oai.CompletionRequest, {"model": "m", "prompt": prompt}).to_generate(None).prompts

    assert prompts("a") == ("a",)
    assert prompts(["a", "b"]) == ("a", "b")
    assert prompts([5, 6, 7]) == ((5, 6, 7),)
    assert prompts([[5, 6], [7]]) == ((5, 6), (7,))
    legacy = parse(
        oai.CompletionRequest,
        {"model": "m", "prompt": "a", "n": 2, "best_of": 3, "echo": True, "logprobs": 1, "max_tokens": 0},
    ).to_generate(None)
    assert (legacy.n, legacy.best_of, legacy.samples, legacy.echo, legacy.top_logprobs) == (2, 3, 3, True, 1)
    assert legacy.sampling.max_new_tokens == 0 and legacy.sequences == 3


def test_openai_chat_tools_go_to_the_template_and_tool_turns_are_kept():
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    message = parse(
        oai.ChatCompletionRequest, {"model": "m", "messages": messages, "tools": [tool]}
    ).to_generate(None)
    assert message.tools == (
        {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
    )
    assert message.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert message.messages[2]["tool_call_id"] == "c1"
    hidden = parse(
        oai.ChatCompletionRequest,
        {"model": "m", "messages": messages[:1], "tools": [tool], "tool_choice": "none"},
    ).to_generate(None)
    assert hidden.tools is None
    with pytest.raises(BadRequestError, match="type"):
        parse(
            oai.ChatCompletionRequest,
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
        )
