"""DJL's ``input_parser``: the decorators custom ``model.py`` files use, and how a request
names its adapters (``parse_adapters``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from loraserve.djl.encode_decode import decode
from loraserve.djl.inputs import Input
from loraserve.djl.request_io import RequestInput, TextInput

SAGEMAKER_ADAPTER_IDENTIFIER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
SAGEMAKER_ADAPTER_ALIAS_HEADER = "X-Amzn-SageMaker-Adapter-Alias"


def _mark(attribute: str) -> Callable[[Callable], Callable]:
    def decorator(function: Callable) -> Callable:
        setattr(function, attribute, True)  # found by attribute when the module is loaded
        return function

    return decorator


input_formatter = _mark("is_input_formatter")
output_formatter = _mark("is_output_formatter")
prediction_handler = _mark("is_prediction_handler")
init_handler = _mark("is_init_handler")


def requested_adapter_names(input_map: dict, input_item: Input) -> tuple[list, str | None]:
    """The adapter name(s) of one request and its alias. Later sources win, as in DJL: the
    body's ``adapters``, then the content key ``adapter`` (query or workflow), then the
    SageMaker ``X-Amzn-SageMaker-Adapter-Identifier`` header."""
    names: Any = input_map.pop("adapters", []) if isinstance(input_map, dict) else []
    if input_item.contains_key("adapter"):
        names = input_item.get_as_string("adapter")
    alias = None
    if SAGEMAKER_ADAPTER_IDENTIFIER_HEADER in input_item.get_properties():
        names = input_item.get_property(SAGEMAKER_ADAPTER_IDENTIFIER_HEADER)
        alias = input_item.get_property(SAGEMAKER_ADAPTER_ALIAS_HEADER)
    return (names if isinstance(names, list) else [names]), alias


def _fetch_adapters_from_input(input_map: dict, input_item: Input, adapter_registry: dict) -> list:
    """Registry entries of the requested adapters (None for the base model, ``""``)."""
    names, alias = requested_adapter_names(input_map, input_item)
    logging.debug("using adapter %s", alias or names)
    for name in names:
        if name and name not in adapter_registry:
            raise ValueError(f"Adapter {alias or name} is not registered")
    return [adapter_registry.get(name) for name in names]


def parse_adapters(request_input: TextInput, input_item: Input, input_map: dict, **kwargs: Any) -> None:
    """Set ``request_input.adapters`` when the model has LoRA enabled (``configs.enable_lora``)."""
    configs = kwargs.get("configs")
    if not getattr(configs, "enable_lora", False):
        return
    count = len(request_input.input_text) if isinstance(request_input.input_text, list) else 1
    adapters = _fetch_adapters_from_input(input_map, input_item, kwargs.get("adapter_registry") or {})
    if adapters:
        if len(adapters) != count:
            raise ValueError("Number of adapters is not equal to the number of inputs")
        request_input.adapters = adapters[0] if len(adapters) == 1 else adapters


def parse_text_inputs_params(
    request_input: TextInput, input_item: Input, input_map: Any, **kwargs: Any
) -> None:
    """The LMI schema's ``inputs`` and ``parameters`` (a non-object body is the input itself)."""
    if isinstance(input_map, dict):
        request_input.input_text = input_map.pop("inputs", input_map)
        request_input.parameters = input_map.pop("parameters", {})
    else:
        request_input.input_text, request_input.parameters = input_map, {}


def format_input(input_item: Input, **kwargs: Any) -> RequestInput:
    """DJL's default input formatter for text generation."""
    request_input = TextInput()
    input_map = decode(input_item, input_item.get_property("Content-Type"))
    parse_text_inputs_params(request_input, input_item, input_map, **kwargs)
    parse_adapters(request_input, input_item, input_map, **kwargs)
    return request_input
