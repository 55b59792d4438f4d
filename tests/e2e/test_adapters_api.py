"""The adapters API and the three calling techniques, against a real server process."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_adapter_dir, make_store, read_events

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("adapters_api")
    store = make_store(root)
    log = root / "events.jsonl"
    args = ["--model-store", str(store), "--allowed-model-roots", str(root)]
    with ServerProcess(args, env={"ADAPTECHO_LOG": str(log)}, log_path=root / "server.log") as server:
        yield server, store, log


def test_ping_and_model_list(env):
    server, _, _ = env
    assert server.client.get("/ping").json() == {"health": "healthy!"}
    models = server.client.get("/models").json()["models"]
    assert [m["modelName"] for m in models] == ["echo"]
    assert models[0]["status"] == "READY"


def test_startup_adapters_directory_is_registered(env):
    server, store, log = env
    listed = server.client.get("/models/echo/adapters").json()["adapters"]
    assert {a["name"] for a in listed} >= {"a1", "a2"}
    a1 = server.client.get("/models/echo/adapters/a1").json()
    assert a1["src"] == str(store / "echo" / "adapters" / "a1")  # DJL: an object, not a list
    assert a1["pin"] is False
    registered = {e["name"] for e in read_events(log) if e["event"] == "register"}
    assert {"a1", "a2"} <= registered


def test_adapter_from_body_field(env):
    server, _, _ = env
    reply = server.client.post("/predictions/echo", json={"inputs": "hi", "adapters": "a1"})
    assert reply.status_code == 200
    assert reply.json()["adapter"] == "a1" and reply.json()["known"] is True


def test_adapter_list_in_body_one_per_input(env):
    server, _, _ = env
    body = {"inputs": ["x", "y", "z"], "adapters": ["a1", "", "a2"]}
    reply = server.client.post("/predictions/echo", json=body)
    assert reply.json()["adapter"] == ["a1", "", "a2"]
    assert reply.json()["known"] == [True, False, True]


def test_adapter_from_query_parameter_reaches_content(env):
    server, _, _ = env
    reply = server.client.post("/invocations?adapter=a2", json={"inputs": "hi"})
    assert reply.json()["adapter"] == "a2"


def test_adapter_from_custom_attributes_reaches_properties(env):
    server, _, _ = env
    headers = {"X-Amzn-SageMaker-Custom-Attributes": "trace=1; adapter=a1"}
    reply = server.client.post("/invocations", json={"inputs": "hi"}, headers=headers)
    assert reply.json()["adapter"] == "a1"


def test_unknown_adapter_reaches_custom_handler(env):
    """DJL's rule: a custom handler decides about adapters it was not told of ("dynamic")."""
    server, _, _ = env
    reply = server.client.post("/predictions/echo", json={"inputs": "hi", "adapters": "dyn"})
    assert reply.status_code == 200
    assert reply.json() | {"adapter": "dyn", "known": False} == reply.json()


def test_register_call_update_unregister(env):
    server, store, log = env
    src = make_adapter_dir(store / "extra", "life")
    client = server.client
    reply = client.post(f"/models/echo/adapters?name=life&src={src}&rank=8&preload=false")
    assert reply.json() == {"status": "Adapter life registered"}
    register = [e for e in read_events(log) if e["event"] == "register" and e["name"] == "life"][-1]
    assert register["src"] == str(src)
    assert register["options"] == {"preload": "false", "pin": "false", "rank": "8"}
    assert client.post("/predictions/echo", json={"adapters": "life"}).json()["known"] is True
    reply = client.post("/models/echo/adapters/life/update?pin=true&rank=16")
    assert reply.json() == {"status": "Adapter life updated"}
    described = client.get("/models/echo/adapters/life").json()
    assert described["pin"] is True and described["version"] == 2
    update = [e for e in read_events(log) if e["event"] == "update" and e["name"] == "life"][-1]
    assert update["options"]["rank"] == "16" and update["options"]["pin"] == "true"
    assert client.delete("/models/echo/adapters/life").json() == {"status": "Adapter life unregistered"}
    assert client.get("/models/echo/adapters/life").status_code == 404
    assert client.post("/predictions/echo", json={"adapters": "life"}).json()["known"] is False
    assert client.delete("/models/echo/adapters/life").status_code == 404


def test_single_model_short_form(env):
    server, store, _ = env
    src = make_adapter_dir(store / "extra", "short")
    assert server.client.post(f"/adapters?name=short&src=file://{src}").status_code == 200
    assert server.client.get("/adapters/short").json()["name"] == "short"
    assert server.client.post("/adapters/short/update?pin=true").status_code == 200
    assert server.client.delete("/adapters/short").status_code == 200


def test_adapter_list_pagination(env):
    server, store, _ = env
    for i in range(5):
        src = make_adapter_dir(store / "extra", f"page{i}")
        assert server.client.post(f"/models/echo/adapters?name=page{i}&src={src}").status_code == 200
    first = server.client.get("/models/echo/adapters?limit=3").json()
    assert len(first["adapters"]) == 3 and first["nextPageToken"] == "3"
    seen = [a["name"] for a in first["adapters"]]
    token = first["nextPageToken"]
    while token:
        page = server.client.get(f"/models/echo/adapters?limit=3&next_page_token={token}").json()
        seen += [a["name"] for a in page["adapters"]]
        token = page.get("nextPageToken")
    assert {f"page{i}" for i in range(5)} <= set(seen)
    assert len(seen) == len(set(seen))
    for i in range(5):
        server.client.delete(f"/models/echo/adapters/page{i}")


def _tar_with(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def test_archive_sources(env):
    server, store, log = env
    (store / "extra" / "arch.tar.gz").write_bytes(_tar_with({"arch/adapter_config.json": b"{}"}))
    with zipfile.ZipFile(store / "extra" / "zipped.zip", "w") as zf:
        zf.writestr("adapter_config.json", "{}")
    for name, file in (("arch", "arch.tar.gz"), ("zipped", "zipped.zip")):
        reply = server.client.post(f"/models/echo/adapters?name={name}&src={store / 'extra' / file}")
        assert reply.status_code == 200, reply.text
        event = [e for e in read_events(log) if e["event"] == "register" and e["name"] == name][-1]
        assert Path(event["src"], "adapter_config.json").is_file()
        assert server.client.delete(f"/models/echo/adapters/{name}").status_code == 200
        assert not Path(event["src"]).exists()  # the unpacked copy left with the adapter


def test_damaged_archive_is_a_400(env):
    server, store, _ = env
    whole = _tar_with({"adapter_config.json": b"{}" * 5000})
    (store / "extra" / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    reply = server.client.post(f"/models/echo/adapters?name=cut&src={store / 'extra' / 'cut.tar.gz'}")
    assert reply.status_code == 400 and "cut.tar.gz" in reply.json()["message"]


@pytest.mark.parametrize(
    "entries,links,fragment",
    [
        ({"../evil/adapter_config.json": b"{}"}, None, "unsafe entry"),
        ({"/abs/adapter_config.json": b"{}"}, None, "unsafe entry"),
        ({"ok.json": b"{}"}, {"link": "../../../../etc/passwd"}, "pointing outside"),
    ],
)
def test_unsafe_archives_are_refused(env, entries, links, fragment):
    server, store, _ = env
    path = store / "extra" / "evil.tar.gz"
    path.write_bytes(_tar_with(entries, links))
    reply = server.client.post(f"/models/echo/adapters?name=evil&src={path}")
    assert reply.status_code == 400
    assert fragment in reply.json()["message"]
    assert server.client.get("/models/echo/adapters/evil").status_code == 404
    assert not (store.parent / "evil").exists()


@pytest.mark.parametrize(
    "query,status,fragment",
    [
        ("name=a1&src={extra}", 409, "already registered"),
        ("name=new&src={extra}/missing.tar.gz", 400, "does not exist"),  # archives: the server reads
        ("name=new&src=/etc/passwd.tar.gz", 403, "outside the allowed adapter roots"),
        ("name=new&src={extra}/../../../x.zip", 403, "outside"),
        ("name=bad%2Fname&src={extra}", 400, "invalid adapter name"),
        ("name=bad%01ctl&src={extra}", 400, "invalid adapter name"),
        ("name=&src={extra}", 400, "name is required"),
        ("name=new", 400, "src is required"),
        ("name=new&src=s3://bucket/key", 403, "--allowed-adapter-urls"),  # fetched only from allowed prefixes
        ("name=new&src=gs://bucket/key", 409, "not currently supported"),  # DJL's Adapter.newInstance
        ("name=new&src={extra}&pin=maybe", 400, "pin must be true or false"),
    ],
)
def test_bad_registrations(env, query, status, fragment):
    server, store, _ = env
    before = server.client.get("/models/echo/adapters").json()["adapters"]
    reply = server.client.post("/models/echo/adapters?" + query.format(extra=store / "extra"))
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["code"] == status and fragment in body["message"] and "type" in body
    assert server.client.get("/models/echo/adapters").json()["adapters"] == before


def test_custom_handler_gets_src_as_written(env):
    """DJL passes ``src`` through; only what the server itself opens is resolved and sandboxed."""
    server, _, log = env
    for name, src in (("byname", "my-adapter-v2"), ("outside", "/etc")):
        assert server.client.post(f"/models/echo/adapters?name={name}&src={src}").status_code == 200
        event = [e for e in read_events(log) if e["event"] == "register" and e["name"] == name][-1]
        assert event["src"] == src
        assert server.client.get(f"/models/echo/adapters/{name}").json()["src"] == src
        server.client.delete(f"/models/echo/adapters/{name}")


def test_handler_refusal_leaves_nothing_registered(env):
    server, store, _ = env
    src = make_adapter_dir(store / "extra", "refused")
    reply = server.client.post(f"/models/echo/adapters?name=refused&src={src}&fail=true")
    assert reply.status_code == 400 and "refused" in reply.json()["message"]
    assert server.client.get("/models/echo/adapters/refused").status_code == 404


@pytest.mark.parametrize(
    "method,path,kwargs,status",
    [
        ("post", "/predictions/echo", {"content": b'{"inputs": ', "headers": JSON}, 400),
        ("post", "/predictions/echo", {"json": {"inputs": "x", "adapters": 5}}, 400),
        ("post", "/predictions/echo", {"json": {"inputs": "x", "adapters": [1]}}, 400),
        ("post", "/predictions/nomodel", {"json": {}}, 404),
        ("post", "/invocations", {"json": {}, "headers": {"X-Amzn-SageMaker-Target-Model": "no"}}, 404),
        ("get", "/models/nomodel", {}, 404),
        ("get", "/models/nomodel/adapters", {}, 404),
        ("get", "/models/echo/adapters/none", {}, 404),
        ("get", "/models?limit=abc", {}, 400),
        ("get", "/models?limit=0", {}, 400),
        ("put", "/models/echo?min_worker=x", {}, 400),
        ("post", "/models", {}, 400),
        ("post", "/models?url=/does/not/exist", {}, 403),  # outside the allowed model roots
        ("post", "/models?url=/etc", {}, 403),
        ("put", "/models/echo?min_worker=100000", {}, 400),
        ("post", "/predictions/echo", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON}, 400),
        ("post", "/models/echo/adapters", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON}, 400),
        ("post", "/models/echo/adapters?name=x&src=%00", {}, 400),
        ("post", "/models/echo/adapters", {"content": b"[1,2]", "headers": JSON}, 400),
        ("get", "/no/such/route", {}, 404),
        ("delete", "/ping", {}, 405),
    ],
)
def test_bad_requests_get_json_errors(env, method, path, kwargs, status):
    server, _, _ = env
    reply = getattr(server.client, method)(path, **kwargs)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["code"] == status and body["message"] and "Traceback" not in reply.text


def test_handler_exception_is_that_requests_error(env):
    server, _, _ = env
    reply = server.client.post("/predictions/echo", json={"raise": "boom"})
    assert reply.status_code == 424 and reply.json()["error"] == "boom"  # DJL's Output.error body
    assert server.client.post("/predictions/echo", json={"inputs": 1}).status_code == 200


def test_streaming_output(env):
    server, _, _ = env
    with server.client.stream("POST", "/predictions/echo", json={"stream": 3}) as reply:
        lines = [line for line in reply.iter_lines() if line]
    assert reply.status_code == 200 and len(lines) == 3
    assert '"chunk": 2' in lines[2]


def test_register_describe_scale_unregister_model(env):
    server, store, _ = env
    other = make_store(store.parent / "second", name="other", adapters=("b1",)) / "other"
    client = server.client
    reply = client.post(f"/models?url={other}&model_name=other&min_worker=1")
    assert reply.json() == {"status": 'Model "other" registered.'}
    names = [m["modelName"] for m in client.get("/models").json()["models"]]
    assert names == ["echo", "other"]
    page = client.get("/models?limit=1").json()
    assert len(page["models"]) == 1 and page["nextPageToken"] == "1"
    assert client.post("/invocations", json={}).status_code == 400  # which model?
    assert (
        client.post(
            "/invocations", json={"adapters": "b1"}, headers={"X-Amzn-SageMaker-Target-Model": "other"}
        ).json()["known"]
        is True
    )
    assert client.put("/models/other?min_worker=2&max_worker=2").json() == {
        "status": ('Workflow "other" worker scaled. New Worker configuration min workers:2 max workers:2')
    }
    workers = client.get("/models/other").json()[0]["models"][0]["workerGroups"][0]["workers"]
    assert len(workers) == 2
    pids = {client.post("/predictions/other", json={"adapters": "b1"}).json()["pid"] for _ in range(12)}
    assert all(client.post("/predictions/other", json={"adapters": "b1"}).json()["known"] for _ in range(4))
    assert pids <= {w["pid"] for w in workers}
    assert client.delete("/models/other").json() == {"status": 'Model or workflow "other" unregistered'}
    assert client.get("/models/other").status_code == 404
    assert client.post("/models?url=/nope&model_name=x").status_code == 403  # outside the roots
