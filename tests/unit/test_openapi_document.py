"""The OpenAPI document declares the management API's query parameters and bodies (DJL's
query parameters stay query parameters), so clients and fuzzers can see it."""

from __future__ import annotations

import pytest

from loraserve.api.app import create_app
from loraserve.config import ServerConfig


@pytest.fixture(scope="module")
def document() -> dict:
    return create_app(ServerConfig()).openapi()


@pytest.mark.parametrize(
    "method,path,query,body",
    [
        (
            "post",
            "/models",
            {"url", "model_name", "model_version", "batch_size", "min_worker", "max_worker", "synchronous"},
            True,
        ),
        ("get", "/models", {"limit", "next_page_token"}, False),
        ("put", "/models/{name}", {"min_worker", "max_worker"}, False),
        ("post", "/models/{model_name}/adapters", {"name", "src", "preload", "pin"}, True),
        ("post", "/adapters", {"name", "src", "preload", "pin"}, True),
        ("post", "/models/{model_name}/adapters/{adapter}/update", {"src", "preload", "pin"}, True),
        ("get", "/models/{model_name}/adapters", {"limit", "next_page_token"}, False),
        ("post", "/workflows", {"url", "template"}, False),
        ("put", "/workflows/{name}", {"min_worker", "max_worker"}, False),
    ],
)
def test_management_parameters_are_declared(document, method, path, query, body):
    operation = document["paths"][path][method]
    declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    assert query <= declared
    assert ("requestBody" in operation) is body


def test_worker_counts_and_flags_are_typed(document):
    parameters = {p["name"]: p["schema"] for p in document["paths"]["/models"]["post"]["parameters"]}
    assert {"type": "integer", "minimum": 1} in parameters["min_worker"]["anyOf"]
    assert {"type": "boolean"} in parameters["synchronous"]["anyOf"]
