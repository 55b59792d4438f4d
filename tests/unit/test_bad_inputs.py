"""Malformed inputs get a clear 400 naming the problem, never an exception's text."""

from __future__ import annotations

import json

import pytest

from loraserve.api.request_input import parse_json_body
from loraserve.errors import BadRequestError


@pytest.mark.parametrize(
    "body",
    [b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', b'{"prompt": "\\uDC00"}', b'["\\ud83d"]'],
)
def test_lone_surrogates_are_a_400(body):
    with pytest.raises(BadRequestError, match="lone surrogate"):
        parse_json_body(body, "application/json")


def test_paired_surrogates_and_invalid_utf8():
    assert parse_json_body(b'{"p": "\\ud83d\\ude00"}', "application/json") == {"p": "\U0001f600"}
    with pytest.raises(BadRequestError, match="malformed JSON"):
        parse_json_body(b'{"p": "\xff\xfe"}', "application/json")


@pytest.mark.parametrize(
    "config",
    [
        [1, 2],
        None,
        "lora",
        5,
        {"r": 8, "target_modules": 5},
        {"peft_type": ["LORA"]},
        {"layers_to_transform": "0"},
        {"exclude_modules": [1]},
    ],
)
def test_bad_adapter_config_shapes_are_refused_by_name(tmp_path, config):
    from loraserve.model.peft_adapter import AdapterFormatError, read_adapter_config

    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json|peft_type"):
        read_adapter_config(tmp_path, ("q_proj", "v_proj"))


@pytest.mark.parametrize("config", [{"r": "eight"}, {"r": 4, "lora_alpha": None}, {"r": 0}])
def test_bad_rank_and_alpha_values_are_refused_by_name(tmp_path, config):
    from loraserve.model.peft_adapter import AdapterFormatError, _rank_and_scaling

    with pytest.raises(AdapterFormatError, match=r"\br\b|lora_alpha"):
        _rank_and_scaling(tmp_path, config, "model.layers.0.self_attn.q_proj", 64)
