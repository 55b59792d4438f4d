"""DJL's rules as pure functions: config.properties keys, adapter precedence, src pass-through,
archive stems and the ``option.enable_lora`` gate."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from loraserve.adapters.sources import handler_src, server_reads
from loraserve.api.request_input import (
    content_adapter,
    fallback_adapter,
    override_adapter,
    refuse_handler_override,
    requested_adapters,
)
from loraserve.djl_config import from_djl_config
from loraserve.errors import BadRequestError, ConfigError, ConflictError, ForbiddenError
from loraserve.model_store import archive_stem, ensure_model_url_allowed
from loraserve.serving.lora_gate import lora_enabled, require_lora
from loraserve.specs import lmi
from loraserve.specs.base import parse

pytestmark = pytest.mark.unit


def _request(query: str = "", headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/invocations",
            "headers": raw,
            "query_string": query.encode(),
        }
    )


def test_djl_config_properties_become_settings():
    settings = from_djl_config(
        {
            "inference_address": "http://0.0.0.0:8081",
            "management_address": "http://0.0.0.0:8081",
            "load_models": "src/test/resources/adapterWorkflows/w1, m:v1:Python=file:models/m.tar.gz,"
            "[b]=models/b ALL",
            "max_request_size": "1024",
            "number_of_netty_threads": "4",
        }
    )
    assert settings == {
        "host": "0.0.0.0",
        "port": "8081",
        "max_request_bytes": "1024",
        "models": "w1=src/test/resources/adapterWorkflows/w1 m=file:models/m.tar.gz b=models/b",
    }


def test_djl_config_refuses_tls_and_keeps_loraserve_keys():
    with pytest.raises(ConfigError, match="plain HTTP"):
        from_djl_config({"inference_address": "https://127.0.0.1:8443"})
    assert from_djl_config({"port": "9", "state_dir": "/tmp/s"}) == {"port": "9", "state_dir": "/tmp/s"}
    assert from_djl_config({"model_store": "/does/not/exist"}) == {}


@pytest.mark.parametrize(
    "query,headers,expected",
    [
        ("", {"X-Amzn-SageMaker-Adapter-Identifier": "h"}, ["h"]),
        ("adapter=q", {"X-Amzn-SageMaker-Adapter-Identifier": "h"}, ["h"]),
        ("adapter=q", {}, ["q"]),
        ("", {"X-Amzn-SageMaker-Custom-Attributes": "adapter=c"}, ["b"]),
        ("", {}, ["b"]),
    ],
)
def test_adapter_precedence(query, headers, expected):
    assert requested_adapters({"adapters": "b"}, _request(query, headers)) == expected


@pytest.mark.parametrize(
    "query,headers,body,expected",
    [
        ("", {"X-Amzn-SageMaker-Adapter-Identifier": "h"}, {"adapters": ["b", "b"]}, ("h", "h")),
        ("adapter=q", {"X-Amzn-SageMaker-Adapter-Identifier": "h"}, {}, ("h", "h")),
        ("adapter=q", {"X-Amzn-SageMaker-Custom-Attributes": "adapter=c"}, {"adapters": "b"}, ("q", "q")),
        ("", {"X-Amzn-SageMaker-Custom-Attributes": "adapter=c"}, {"adapters": ["", "b"]}, (None, "b")),
        ("", {"X-Amzn-SageMaker-Custom-Attributes": "adapter=c"}, {}, ("c", "c")),
    ],
)
def test_adapter_precedence_on_the_typed_engine_path(query, headers, body, expected):
    """The built-in engine's requests are parsed in the front (issue 9): the same DJL order."""
    request = _request(query, headers)
    parsed = parse(lmi.LmiRequest, {"inputs": ["x", "y"], **body})
    message = lmi.to_generate(parsed, fallback_adapter(request), override_adapter(request))
    assert message.adapters == expected


def test_relative_model_url_is_checked_where_it_is_loaded(tmp_path, monkeypatch):
    """DJL finds ``models/m`` in the working directory first; the roots check sees that path."""
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    (store / "models" / "m").mkdir(parents=True)
    (cwd / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    with pytest.raises(ForbiddenError):
        ensure_model_url_allowed("models/m", store, [store])
    assert ensure_model_url_allowed("models/m", store, [cwd]) == (cwd / "models" / "m").resolve()
    (cwd / "models" / "m").rmdir()
    assert ensure_model_url_allowed("models/m", store, [store]) == (store / "models" / "m").resolve()


def test_content_adapter_and_handler_override():
    assert content_adapter(_request("adapter=a1")) == ["a1"] and content_adapter(_request()) == []
    for headers in (
        {"handler": "register_adapter"},
        {"X-Amzn-SageMaker-Custom-Attributes": "handler=register_adapter"},
    ):
        with pytest.raises(BadRequestError, match="can't be overridden"):
            refuse_handler_override(_request(headers=headers))
    refuse_handler_override(_request(headers={"x-handler": "fine"}))


@pytest.mark.parametrize(
    "src,builtin,reads",
    [
        ("src", False, False),
        ("/etc", False, False),
        ("a.tar.gz", False, True),
        ("file:///x/a.zip", False, True),
        ("adapters/a1", True, True),
    ],
)
def test_server_reads_only_archives_and_builtin_weights(src, builtin, reads):
    assert server_reads(src, builtin) is reads


def test_handler_src_as_written_but_no_remote_urls():
    assert handler_src("my-adapter") == "my-adapter" and handler_src("file:rel/a") == "file:rel/a"
    with pytest.raises(ConflictError, match="URL adapters are not currently supported"):
        handler_src("s3://bucket/key")
    with pytest.raises(BadRequestError):
        handler_src(" ")
    for bad in ("a" * 4097, "a\x00b"):  # issue 9's bounds hold for a src passed as written
        with pytest.raises(BadRequestError):
            handler_src(bad)


@pytest.mark.parametrize(
    "name,stem",
    [
        ("base-1.tar.gz", "base-1"),
        ("m.zip", "m"),
        ("m.tgz", "m"),
        ("m.tar", "m"),
        ("plain", "plain"),
        (".tar.gz", ".tar.gz"),
    ],
)
def test_archive_stem(name, stem):
    assert archive_stem(name) == stem


def test_enable_lora_gate():
    assert not lora_enabled({}, builtin_engine=False) and lora_enabled({}, builtin_engine=True)
    assert lora_enabled({"enable_lora": "true"}, False)
    assert not lora_enabled({"enable_lora": "false"}, True)
    with pytest.raises(BadRequestError, match="LoRA is not enabled"):
        require_lora("m", {}, builtin_engine=False)
