"""DJL's ``test_model``: build requests and call a handler in-process, for users' unit tests
(``python -m djl_python.test_model --model-dir DIR --input data.json``)."""

from __future__ import annotations

import argparse
import io
import os
import sys
from types import ModuleType
from typing import Any

from loraserve.djl.inputs import Input
from loraserve.djl.np_util import to_nd_list
from loraserve.djl.outputs import Output, binary_decode, encode_json
from loraserve.djl.pair_list import PairList
from loraserve.djl.service_loader import ModelService, load_model_service

_TYPES_BY_SUFFIX = {
    ".json": "application/json",
    ".txt": "text/plain",
    ".gif": "images/gif",
    ".png": "images/png",
    ".jpeg": "images/jpeg",
    ".jpg": "images/jpeg",
    ".ndlist": "tensor/ndlist",
    ".npz": "tensor/npz",
}


def _request(content_type: str, value: bytes | bytearray, key: str | None) -> Input:
    request = Input()
    request.properties["device_id"] = "-1"
    request.properties["content-type"] = content_type
    request.content.add(key=key, value=value)
    return request


def create_request(input_files: list[str], parameters: list[str] | None) -> Input:
    """``[key=]file-or-text`` items → one Input; properties from ``key=value`` parameters."""
    request = Input()
    request.properties["device_id"] = "-1"
    for parameter in parameters or []:
        key, sep, value = parameter.partition("=")
        if not sep:
            raise ValueError(f"Invalid model parameter: {parameter}")
        request.properties[key] = value
    data_file = None
    for item in input_files:
        name, sep, text = item.partition("=")
        content_key = name if sep else None
        value = text if sep else item
        if data_file is None or content_key == "data":
            data_file = value
        if os.path.exists(value):
            with open(value, "rb") as file:
                request.content.add(key=content_key, value=file.read())
        else:
            request.content.add(key=content_key, value=value.encode("utf-8"))
            is_json = value.startswith("{") and value.endswith("}")
            request.properties["content-type"] = "application/json" if is_json else "text/plain"
    suffix = os.path.splitext(data_file or "")[1]
    if suffix in _TYPES_BY_SUFFIX:
        request.properties["content-type"] = _TYPES_BY_SUFFIX[suffix]
    return request


def create_concurrent_batch_request(
    inputs: list[dict], properties: list[dict] | None = None, serving_properties: dict | None = None
) -> Input:
    """Several requests as one batched Input (``batch_NNN_`` keys), as DJL's batcher builds it."""
    flat = serving_properties if serving_properties else {}
    for index, props in enumerate(properties or []):
        for key, value in props.items():
            flat[f"batch_{index:03d}_{key}"] = value
    content = PairList()
    for index, data in enumerate(inputs):
        content.add(f"batch_{index:03d}_data", encode_json(data))
    request = Input()
    request.properties = flat
    request.function_name = flat.get("handler", "handle")
    request.content = content
    flat["batch_size"] = len(inputs)
    return request


def create_json_request(json_data: Any, key: str | None = None) -> Input:
    return _request("application/json", encode_json(json_data), key)


def create_text_request(text: str, key: str | None = None) -> Input:
    return _request("text/plain", text.encode("utf-8"), key)


def create_3p_request(json_data: Any, stream: bool = False, key: str | None = None) -> Input:
    request = create_json_request(json_data, key)
    api = "InvokeEndpointWithResponseStream" if stream else "InvokeEndpoint"
    request.properties["X-Amzn-SageMaker-Forwarded-Api"] = api
    return request


def create_numpy_request(arrays: list, key: str | None = None) -> Input:
    return _request("tensor/ndlist", to_nd_list(arrays), key)


def create_npz_request(arrays: list, key: str | None = None) -> Input:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return _request("tensor/npz", buffer.getvalue(), key)


def extract_output_as_input(outputs: Output) -> Input:
    inputs = Input()
    inputs.properties = outputs.properties
    inputs.content = outputs.content
    return inputs


def extract_output_as_bytes(outputs: Output, key: str | None = None) -> Any:
    return extract_output_as_input(outputs).get_as_bytes(key)


def extract_output_as_numpy(outputs: Output, key: str | None = None) -> list:
    return extract_output_as_input(outputs).get_as_numpy(key)


def extract_output_as_npz(outputs: Output, key: str | None = None) -> list:
    return extract_output_as_input(outputs).get_as_npz(key)


def extract_output_as_string(outputs: Output, key: str | None = None) -> str:
    return extract_output_as_input(outputs).get_as_string(key)


decode_encoded_output_binary = binary_decode  # DJL's name for reading ``Output.binary_encode``


def load_properties(properties_dir: str | None) -> dict[str, str]:
    """``serving.properties`` of a model directory, ``option.`` dropped from the keys."""
    path = os.path.join(properties_dir or "", "serving.properties")
    if not properties_dir or not os.path.exists(path):
        return {}
    properties = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.startswith("#") or not line.strip():
                continue
            key, _, value = line.strip().partition("=")
            properties[key.strip().removeprefix("option.")] = value.strip()
    return properties


def update_properties_with_env_vars(kwargs: dict) -> dict:
    """``HF_MODEL_ID`` and ``OPTION_*`` environment variables, as DJL's containers read them."""
    for key, value in os.environ.items():
        if key == "HF_MODEL_ID":
            kwargs.setdefault("model_id", value)
        if key.startswith("OPTION_"):
            name = key[7:].lower()
            kwargs.setdefault("entryPoint" if name == "entrypoint" else name, value)
    return kwargs


class TestHandler:
    """Load a handler (a ``model.py`` in ``model_dir`` or a module) and call it like the server."""

    __test__ = False  # not a pytest test class

    def __init__(self, entry_point: str | ModuleType, model_dir: str | None = None) -> None:
        self.serving_properties = update_properties_with_env_vars({})
        self.serving_properties.update(load_properties(model_dir))
        if isinstance(entry_point, str):
            model_dir = os.path.abspath(model_dir or ".")
            os.chdir(model_dir)  # DJL runs handlers from their model directory
            sys.path.append(model_dir)
            self.service = load_model_service(model_dir, entry_point, "-1")
        else:
            self.service = ModelService(entry_point, model_dir)

    def inference(self, inputs: Input) -> Any:
        function_name = inputs.get_function_name() or "handle"
        inputs.properties.update(self.serving_properties)
        return self.service.invoke_handler(function_name, inputs)

    def inference_batch(
        self, inputs: list[dict], properties: list[dict] | None = None, serving_properties: dict | None = None
    ) -> Any:
        return self.inference(create_concurrent_batch_request(inputs, properties, serving_properties))


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a DJL-style handler on one request.")
    parser.add_argument("--model-dir", default=".")
    parser.add_argument("--entry-point", default="model.py")
    parser.add_argument("--handler", default="handle")
    parser.add_argument("--input", nargs="+", default=[], help="[key=]file or text")
    parser.add_argument("--parameters", nargs="*", default=[], help="key=value properties")
    args = parser.parse_args(argv)
    inputs = create_request(args.input, args.parameters)
    inputs.function_name = args.handler
    outputs = TestHandler(args.entry_point, args.model_dir).inference(inputs)
    print("output: " + str(outputs))


if __name__ == "__main__":
    run()
