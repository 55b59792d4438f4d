"""TGI's / LoRAX's request parameters → one ``GenerateRequest``: each either honoured or
refused by name; the defaults their clients always send pass."""

from __future__ import annotations

import pytest

from loraserve.errors import BadRequestError
from loraserve.specs import tgi
from loraserve.specs.base import parse

# What text-generation 0.7's client sends for generate("x") (details forced on).
CLIENT_DEFAULTS = {
    "best_of": None,
    "details": True,
    "do_sample": False,
    "max_new_tokens": 20,
    "repetition_penalty": None,
    "frequency_penalty": None,
    "return_full_text": False,
    "seed": None,
    "stop": [],
    "temperature": None,
    "top_k": None,
    "top_p": None,
    "truncate": None,
    "typical_p": None,
    "watermark": False,
    "decoder_input_details": False,
    "top_n_tokens": None,
    "grammar": None,
}


def request(**parameters) -> tgi.TgiRequest:
    return parse(tgi.TgiRequest, {"inputs": "hi", "parameters": parameters, "stream": False})


def test_client_defaults_are_greedy():
    message = request(**CLIENT_DEFAULTS).to_generate(stream=False)
    assert message.sampling.do_sample is False and message.sampling.max_new_tokens == 20
    assert message.adapters == (None,) and message.details


@pytest.mark.parametrize(
    "parameters,sampled",
    [
        ({}, False),
        ({"do_sample": True}, True),
        ({"temperature": 0.7}, True),
        ({"top_k": 5}, True),
        ({"top_p": 0.9}, True),
        ({"temperature": 1.0}, False),
        ({"do_sample": True, "temperature": 0.0}, False),
    ],
)
def test_sampling_as_tgi_decides(parameters, sampled):
    assert request(**parameters).to_generate(stream=False).sampling.do_sample is sampled


@pytest.mark.parametrize(
    "name,value",
    [
        ("best_of", 2),
        ("truncate", 10),
        ("typical_p", 0.5),
        ("frequency_penalty", 0.5),
        ("watermark", True),
        ("decoder_input_details", True),
        ("top_n_tokens", 3),
        ("return_k_alternatives", 2),
        ("grammar", {"type": "regex", "value": "a+"}),
        ("response_format", {"type": "json_object"}),
        ("adapter_source", "local"),
        ("api_token", "hf_x"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(name, value):
    with pytest.raises(BadRequestError, match=rf"parameters\.{name}"):
        request(**{name: value}).to_generate(stream=False)


def test_merged_adapters_are_a_linear_mixture():
    merged = {"ids": ["a", "b"], "weights": [0.5, 0.25], "density": 1.0}
    message = request(merged_adapters=merged).to_generate(stream=False)
    assert message.mixture == (("a", 0.5), ("b", 0.25)) and message.adapter_names == ["a", "b"]
    with pytest.raises(BadRequestError, match="merge_strategy"):
        request(merged_adapters={**merged, "merge_strategy": "ties"}).to_generate(stream=False)
    with pytest.raises(BadRequestError, match="one weight per id"):
        request(merged_adapters={**merged, "weights": [1.0]}).to_generate(stream=False)


def test_unknown_fields_and_empty_inputs_are_refused():
    with pytest.raises(BadRequestError, match=r"parameters\.made_up"):
        request(made_up=1)
    with pytest.raises(BadRequestError, match="inputs"):
        parse(tgi.TgiRequest, {"inputs": ""})
