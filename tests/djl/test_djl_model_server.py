"""DJL Serving's own Java tests of adapters, replayed as HTTP requests against loraserve.

Written here from deepjavalibrary/djl-serving at commit d21927c4a692335fba62a87cc430a5fc00c5f790:

- ``serving/src/test/java/ai/djl/serving/ModelServerTest.java``: the adapter part of ``test()``
  (``testRegisterAdapter(channel, true, true)`` … ``testUnregisterAdapter``, then its negative
  adapter cases ``testRegisterAdapterConflict`` … ``testUnregisterAdapterNotFound``),
  ``testAdapterSME`` and ``testAdapterWorkflows``;
- ``engines/python/src/test/java/ai/djl/python/engine/PyEngineTest.java``: ``testModelException``,
  ``testEchoModel``/``testBatchEcho`` (one request each), ``testStreamEcho``, the OOM test and
  ``testRestartProcess``, sent through the server.

They run DJL's own test models and configuration files, copied unchanged into
``tests/djl/resources`` (see PROVENANCE.md), from a working directory laid out as DJL's
``serving/`` folder, so ``file:src/test/resources/adaptecho`` resolves as it does for DJL.
Each helper is named after the DJL method it replays and asserts what that method asserts.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from loraserve.testing.server import ServerProcess

pytestmark = pytest.mark.e2e
RESOURCES = Path(__file__).parent / "resources"
TEXT = {"content-type": "text/plain"}


def djl_serving_dir(root: Path) -> Path:
    """DJL's ``serving/`` working directory: ``src/test/resources/…`` and ``build/models``."""
    serving = root / "serving"
    shutil.copytree(
        RESOURCES,
        serving / "src" / "test" / "resources",
        ignore=shutil.ignore_patterns("__pycache__", "*.md"),
    )
    (serving / "build" / "models").mkdir(parents=True)
    return serving


def http_config(serving: Path, name: str) -> Path:
    """DJL's config file, served over plain HTTP (loraserve has no TLS of its own)."""
    text = (serving / "src" / "test" / "resources" / name).read_text()
    target = serving / (name.replace("/", "_") + ".http")
    target.write_text(text.replace("https://", "http://"))
    return target


def start(serving: Path, config: Path, log: Path) -> ServerProcess:
    """DJL's tests register models from ``src/test/resources``: loraserve loads models over the
    API only from the allowed model roots (issue 9), so the deployment lists that folder."""
    roots = {"LORASERVE_ALLOWED_MODEL_ROOTS": str(serving / "src" / "test" / "resources")}
    return ServerProcess(["--config", str(config)], cwd=serving, log_path=log, env=roots).start()


# --- ModelServerTest's adapter helpers ------------------------------------------------------


def adapter_missing(client: httpx.Client) -> None:
    reply = client.post(
        "/predictions/adaptecho?adapter=adaptable", content=b"testPredictAdapter", headers=TEXT
    )
    assert reply.status_code == 424


def register_adapter(client: httpx.Client, register_model: bool, model_prefix: bool) -> None:
    if register_model:
        url = quote("file:src/test/resources/adaptecho", safe="")
        assert client.post(f"/models?model_name=adaptecho&url={url}").status_code == 200
    adapter_missing(client)
    prefix = "/models/adaptecho" if model_prefix else ""
    reply = client.post(f"{prefix}/adapters?name=adaptable&src=src&echooption=opt")
    assert reply.status_code == 200
    assert reply.json()["status"] == "Adapter adaptable registered"
    described = client.get(f"{prefix}/adapters/adaptable")
    assert described.status_code == 200
    assert _adapter(described.json()) == ("adaptable", "src", True, False)


def _adapter(body: dict) -> tuple:
    """The four fields of DJL's ``DescribeAdapterResponse``."""
    return body["name"], body["src"], body["preload"], body["pin"]


def update_adapter(client: httpx.Client, model_prefix: bool) -> None:
    prefix = "/models/adaptecho" if model_prefix else ""
    reply = client.post(f"{prefix}/adapters/adaptable/update?pin=true")
    assert reply.status_code == 200 and reply.json()["status"] == "Adapter adaptable updated"
    assert _adapter(client.get(f"{prefix}/adapters/adaptable").json()) == ("adaptable", "src", True, True)


def adapter_no_predict_register(client: httpx.Client) -> None:
    headers = {**TEXT, "handler": "register_adapter", "name": "malicious_name", "src": "malicious_url"}
    reply = client.post("/predictions/adaptecho?adapter=adaptable", content=b"tt", headers=headers)
    assert reply.status_code == 400


def adapter_predict(
    client: httpx.Client, model: str = "adaptecho", adapter: str = "adaptable", option: str = "opt"
) -> None:
    reply = client.post(
        f"/predictions/{model}?adapter={adapter}", content=b"testPredictAdapter", headers=TEXT
    )
    assert reply.status_code == 200 and reply.text == f"{adapter}{option}testPredictAdapter"


def adapter_dir_predict(client: httpx.Client) -> None:
    reply = client.post(
        "/predictions/adaptecho?adapter=myBuiltinAdapter", content=b"testPredictBuiltinAdapter", headers=TEXT
    )
    assert reply.status_code == 200 and reply.text == "myBuiltinAdaptertestPredictBuiltinAdapter"


def adapter_invoke(client: httpx.Client) -> None:
    reply = client.post(
        "/invocations?model_name=adaptecho&adapter=adaptable", content=b"testInvokeAdapter", headers=TEXT
    )
    assert reply.status_code == 200 and reply.text == "adaptableopttestInvokeAdapter"


def list_adapter(client: httpx.Client, model_prefix: bool) -> None:
    prefix = "/models/adaptecho" if model_prefix else ""
    reply = client.get(f"{prefix}/adapters")
    assert reply.status_code == 200
    assert any(a["name"] == "adaptable" for a in reply.json()["adapters"])


def describe_adapter(client: httpx.Client, model_prefix: bool) -> None:
    prefix = "/models/adaptecho" if model_prefix else ""
    reply = client.get(f"{prefix}/adapters/adaptable")
    assert reply.status_code == 200
    assert _adapter(reply.json()) == ("adaptable", "src", True, True)


def adapter_scale(client: httpx.Client) -> None:
    reply = client.put("/models/adaptecho?min_worker=4&max_worker=4")
    assert reply.json()["status"] == (
        'Workflow "adaptecho" worker scaled. New Worker configuration min workers:4 max workers:4'
    )
    for _ in range(4):  # DJL: "has 3/4 chance to hit a worker that was scaled"; we try each
        adapter_predict(client)


def unregister_adapter(client: httpx.Client, model_prefix: bool) -> None:
    prefix = "/models/adaptecho" if model_prefix else ""
    reply = client.delete(f"{prefix}/adapters/adaptable")
    assert reply.status_code == 200 and reply.json()["status"] == "Adapter adaptable unregistered"
    listed = client.get(f"{prefix}/adapters")
    assert listed.status_code == 200
    assert not any(a["name"] == "adaptable" for a in listed.json()["adapters"])


def _not_listed(client: httpx.Client, adapter: str) -> bool:
    listed = client.get("/models/adaptecho/adapters")
    return listed.status_code == 200 and all(a["name"] != adapter for a in listed.json()["adapters"])


# --- the DJL test methods -------------------------------------------------------------------


@pytest.fixture(scope="module")
def djl_server(tmp_path_factory: pytest.TempPathFactory):
    """``test()``'s server, without its DJL model-zoo models: an empty store and DJL's Python
    ``echo`` model from ``load_models`` (``adaptecho`` is registered by the test, as in DJL)."""
    root = tmp_path_factory.mktemp("djl")
    serving = djl_serving_dir(root)
    config = serving / "config.properties"
    config.write_text(
        "inference_address=http://127.0.0.1:8080\nmanagement_address=http://127.0.0.1:8080\n"
        "model_store=build/models\nload_models=src/test/resources/echo\n"
        "max_request_size=10485760\n"
    )
    server = start(serving, config, root / "server.log")
    yield server
    server.stop()


def test_model_server_adapter_api(djl_server):
    """``ModelServerTest.test()``, its adapter API part, in DJL's order."""
    client = djl_server.client
    register_adapter(client, register_model=True, model_prefix=True)
    update_adapter(client, model_prefix=True)
    adapter_no_predict_register(client)
    adapter_predict(client)
    adapter_dir_predict(client)
    adapter_invoke(client)
    list_adapter(client, model_prefix=True)
    describe_adapter(client, model_prefix=True)
    adapter_scale(client)
    unregister_adapter(client, model_prefix=True)


def test_model_server_adapter_errors(djl_server):
    """``test()``'s negative adapter cases, in DJL's order (after the flow above)."""
    client = djl_server.client
    if "adaptecho" not in [m["modelName"] for m in client.get("/models").json()["models"]]:
        url = quote("file:src/test/resources/adaptecho", safe="")
        assert client.post(f"/models?model_name=adaptecho&url={url}").status_code == 200
    register = "/models/adaptecho/adapters?name=adaptable&src=src&echooption=opt"
    assert client.post(register).status_code == 200  # testRegisterAdapterConflict
    assert client.post(register).status_code == 409
    assert client.post("/models/invalid_model/adapters?name=adaptable&echooption=opt").status_code == 404
    reply = client.post("/models/adaptecho/adapters?name=adaptable2&src=src&error=true")
    assert reply.status_code == 424 and _not_listed(client, "adaptable2")  # HandlerError
    reply = client.post("/models/adaptecho/adapters?name=adaptable2&src=src&oom=true")
    assert reply.status_code == 507 and _not_listed(client, "adaptable2")  # RegisterAdapterOom
    assert client.post("/models/invalid_model/adapters/adaptable/update?src=src1").status_code == 404
    assert client.post("/models/adaptecho/adapters/invalid_adapter/update?src=src1").status_code == 404
    for flag, status in (("error", 424), ("oom", 507)):  # testUpdateAdapterHandlerError / Oom
        reply = client.post(f"/models/adaptecho/adapters/adaptable/update?src=src1&load=false&{flag}=true")
        assert reply.status_code == status
        assert _adapter(client.get("/models/adaptecho/adapters/adaptable").json()) == (
            "adaptable",
            "src",
            True,
            False,
        )
    for method in ("get", "delete"):
        assert getattr(client, method)("/models/invalid_model/adapters/adaptable").status_code == 404
        assert getattr(client, method)("/models/adaptecho/adapters/invalid_adapter").status_code == 404
    assert client.get("/models/invalid_model/adapters").status_code == 404


def test_adapter_sme(tmp_path):
    """``testAdapterSME``: one startup model, adapters without the ``/models/{m}`` prefix."""
    serving = djl_serving_dir(tmp_path)
    server = start(serving, http_config(serving, "smeAdapt.config.properties"), tmp_path / "server.log")
    try:
        client = server.client
        register_adapter(client, register_model=False, model_prefix=False)
        update_adapter(client, model_prefix=False)
        adapter_predict(client)
        list_adapter(client, model_prefix=False)
        describe_adapter(client, model_prefix=False)
        unregister_adapter(client, model_prefix=False)
    finally:
        server.stop()


def test_adapter_workflows(tmp_path):
    """``testAdapterWorkflows``: two workflows, each with an adapter of one shared model (adapter
    ``src`` values "url1"/"url2" reach the handler as written), then the adapter template."""
    serving = djl_serving_dir(tmp_path)
    config = http_config(serving, "adapterWorkflows/config.properties")
    server = start(serving, config, tmp_path / "server.log")
    try:
        client = server.client
        for workflow, prefix in (("adapter1", "a1weo"), ("adapter2", "a2")):  # testAdapterWorkflowPredict
            reply = client.post(f"/predictions/{workflow}", content=b"testAWP", headers=TEXT)
            assert reply.status_code == 200 and reply.text == f"{prefix}testAWP"
        model = quote("src/test/resources/adaptecho", safe="")
        reply = client.post(f"/workflows?template=adapter&adapter=a&url=dummy&model={model}")
        assert reply.json()["status"] == 'Workflow "a" registered.'  # testRegisterAdapterWorkflowTemplate
    finally:
        server.stop()


# --- PyEngineTest's echo model, through the server ------------------------------------------


def test_py_engine_echo_model(djl_server):
    """``testEchoModel`` / ``testBatchEcho`` (one request), ``testModelException`` and the OOM
    test: a handler's exception is DJL's 424 JSON answer, a non-Output return value too, and
    ``MemoryError`` is 507."""
    client = djl_server.client
    assert client.post("/predictions/echo", content=b"test2", headers=TEXT).text == "test2"
    reply = client.post("/predictions/echo?exception=model%20error", content=b"x")
    assert reply.status_code == 424 and reply.json()["error"] == "model error"
    assert client.post("/predictions/echo?typeerror=type%20error", content=b"x").status_code == 424
    assert client.post("/predictions/echo?exception=", content=b"x").status_code == 424
    assert client.post("/predictions/echo?OOM=true", content=b"x").status_code == 507


def test_py_engine_restart_process(djl_server):
    """``testRestartProcess``: ``sys.exit()`` in a handler fails that request; the worker is
    restarted and the next request is answered."""
    client = djl_server.client
    assert client.post("/predictions/echo?exit=true", content=b"x").status_code >= 500
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = client.post("/predictions/echo", content=b"input", headers=TEXT)
        if reply.status_code == 200:
            break
        time.sleep(0.2)
    assert reply.status_code == 200 and reply.text == "input"


@pytest.mark.slow
def test_py_engine_stream_echo(djl_server):
    """``testStreamEcho``: five tokens ``t-N\\n`` (one a second), sent unframed (formatter None)."""
    with djl_server.client.stream("POST", "/predictions/echo?stream=true", content=b"") as reply:
        body = b"".join(reply.iter_bytes())
    assert reply.status_code == 200 and body == b"t-0\nt-1\nt-2\nt-3\nt-4\n" and len(body) == 20


def test_lora_gate_as_djl(djl_server):
    """DJL's ``AdapterManagementRequestHandler``: a model without ``option.enable_lora=true``
    (DJL's ``echo``) refuses every adapter route with 400 "LoRA is not enabled."."""
    client = djl_server.client
    for method, path in (
        ("get", "/models/echo/adapters"),
        ("post", "/models/echo/adapters?name=a&src=s"),
        ("get", "/models/echo/adapters/a"),
        ("delete", "/models/echo/adapters/a"),
    ):
        reply = getattr(client, method)(path)
        assert reply.status_code == 400 and "LoRA is not enabled" in reply.json()["message"]
