"""An adapter's own ``model.py`` (DJL's AdapterFormatterMixin) on the built-in engine, through a
real server: its input formatter maps a custom field to LMI's ``inputs``, its output formatter
wraps the generated text; a failing formatter, a stream through the output formatter and a broken
``model.py`` are clear JSON errors; once the adapter is unregistered nothing formats any more."""

from __future__ import annotations

import pytest

from loraserve.testing.server import ServerProcess
from loraserve.testing.tiny import make_peft_adapter
from tests.e2e.helpers import make_engine_store

MODEL_PY = """
from djl_python.input_parser import input_formatter, output_formatter

@input_formatter
def ask(body, **kwargs):
    rest = {k: v for k, v in body.items() if k != "question"}
    return {**rest, "inputs": body["question"], "parameters": {"max_new_tokens": 4}}

@output_formatter
def wrap(response):
    return {"answer": response["generated_text"], "formatted_by": "fmt"}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("formatters")
    store, base = make_engine_store(root)
    for name, code in (("fmt", MODEL_PY), ("broken", "def ask(:\n")):
        (make_peft_adapter(base, store / "extra" / name, rank=4) / "model.py").write_text(code)
    with ServerProcess(["--model-store", str(store)], log_path=root / "server.log") as server:
        yield server, store


def test_formatters_apply_to_requests_naming_the_adapter_until_it_is_unregistered(env):
    server, store = env
    client = server.client
    assert client.post(f"/models/tiny/adapters?name=fmt&src={store / 'extra' / 'fmt'}").status_code == 200
    shown = client.get("/models/tiny/adapters/fmt").json()
    assert shown["has_custom_code"] is True
    assert shown["formatters"] == ["input_formatter", "output_formatter"]

    reply = client.post("/invocations", json={"question": "hello world", "adapters": "fmt"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["formatted_by"] == "fmt" and isinstance(reply.json()["answer"], str)
    same = client.post("/invocations?adapter=fmt", json={"question": "hello world"})
    assert same.json() == reply.json()  # greedy: the same answer, whichever way the adapter is named
    plain = client.post("/invocations", json={"inputs": "hello world", "adapters": "qv"})
    assert set(plain.json()) == {"generated_text"}  # an adapter without model.py: LMI as usual

    failed = client.post("/invocations", json={"inputs": "no question", "adapters": "fmt"})
    assert failed.status_code == 424 and "adapter fmt's input formatter failed: KeyError" in failed.text
    assert "Traceback" not in failed.text
    streamed = client.post("/invocations", json={"question": "x", "adapters": "fmt", "stream": True})
    assert streamed.status_code == 400 and "adapter fmt has an output formatter" in streamed.text
    # routes that do not run formatters refuse the adapter instead of answering unformatted
    chat = {"model": "tiny:fmt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    tgi = {"inputs": "hi", "parameters": {"adapter_id": "fmt", "max_new_tokens": 2}}
    for path, body in (("/v1/chat/completions", chat), ("/generate", tgi)):
        refused = client.post(path, json=body)
        assert refused.status_code == 400 and "adapter fmt has its own formatters" in refused.text, path

    assert client.delete("/models/tiny/adapters/fmt").status_code == 200
    unformatted = client.post("/invocations", json={"question": "hello world", "adapters": "fmt"})
    assert unformatted.status_code == 400 and "question" in unformatted.text  # LMI has no such field
    gone = client.post("/invocations", json={"inputs": "hello world", "adapters": "fmt"})
    assert gone.status_code == 424 and "has not been registered" in gone.text


def test_a_broken_model_py_refuses_the_registration(env):
    server, store = env
    reply = server.client.post(f"/models/tiny/adapters?name=broken&src={store / 'extra' / 'broken'}")
    assert reply.status_code == 424 and "adapter broken: its model.py could not be loaded" in reply.text
    assert "Traceback" not in reply.text
    assert server.client.get("/models/tiny/adapters/broken").status_code == 404
