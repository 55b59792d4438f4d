"""Batching, restarts, dying workers, limits and the seed document's examples."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_adapter_dir, make_store, read_events


def test_dynamic_batching_mixed_adapters(tmp_path):
    store = make_store(
        tmp_path, properties="engine=Python\noption.enable_lora=true\nbatch_size=4\nmax_batch_delay=2000\n"
    )  # DJL: adapters need enable_lora
    with ServerProcess(["--model-store", str(store)]) as server:
        adapters = ["a1", "", "a2", "dyn"]

        def call(adapter: str) -> dict:
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                return client.post("/predictions/echo", json={"inputs": "x", "adapters": adapter}).json()

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, adapters))
    assert [r["adapter"] for r in results] == adapters
    assert [r["known"] for r in results] == [True, False, True, False]
    assert all(r["batch_size"] == 4 for r in results)  # one batched Input with all four


def test_adapters_survive_restart(tmp_path):
    store = make_store(tmp_path)
    src = make_adapter_dir(store / "extra", "kept")
    args = ["--model-store", str(store)]
    with ServerProcess(args) as server:
        reply = server.client.post(f"/models/echo/adapters?name=kept&src={src}&pin=true&k=v")
        assert reply.status_code == 200
        assert server.client.delete("/models/echo/adapters/a2").status_code == 200
    assert (store / ".loraserve" / "state.json").is_file()
    with ServerProcess(args) as server:
        names = [a["name"] for a in server.client.get("/models/echo/adapters").json()["adapters"]]
        assert sorted(names) == ["a1", "kept"]
        kept = server.client.get("/models/echo/adapters/kept").json()  # DJL: an object
        assert kept["pin"] is True and kept["options"] == {"k": "v"}
        assert server.client.post("/predictions/echo", json={"adapters": "kept"}).json()["known"]


def _in_flight(client: httpx.Client) -> int:
    workers = client.get("/models/echo").json()[0]["models"][0]["workerGroups"][0]["workers"]
    return workers[0]["inFlight"] if workers else 0


def test_killed_worker_fails_its_request_and_comes_back_with_adapters(tmp_path):
    store = make_store(tmp_path)
    log = tmp_path / "events.jsonl"
    src = make_adapter_dir(store / "extra", "api1")
    with ServerProcess(["--model-store", str(store)], env={"ADAPTECHO_LOG": str(log)}) as server:
        client = server.client
        assert client.post(f"/models/echo/adapters?name=api1&src={src}").status_code == 200
        old_pid = client.post("/predictions/echo", json={}).json()["pid"]
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(client.post, "/predictions/echo", json={"sleep": 30})
            while not _in_flight(client):
                time.sleep(0.05)
            os.kill(old_pid, signal.SIGKILL)
            reply = slow.result(timeout=30)
        assert reply.status_code == 503
        assert reply.json()["type"] == "WorkerDiedException" and "restarted" in reply.json()["message"]
        deadline = time.monotonic() + 60
        while True:
            answer = client.post("/predictions/echo", json={"adapters": "api1"})
            if answer.status_code == 200 and answer.json()["pid"] != old_pid:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert answer.json()["known"] is True
        assert set(answer.json()["registered"]) == {"a1", "a2", "api1"}
        new_pid = answer.json()["pid"]
        replayed = {e["name"] for e in read_events(log) if e["event"] == "register" and e["pid"] == new_pid}
        assert replayed == {"a1", "a2", "api1"}
        names = [a["name"] for a in client.get("/models/echo/adapters").json()["adapters"]]
        assert sorted(names) == ["a1", "a2", "api1"]


def test_worker_crash_inside_handler(tmp_path):
    store = make_store(tmp_path)
    with ServerProcess(["--model-store", str(store)]) as server:
        reply = server.client.post("/predictions/echo", json={"crash": True})
        assert reply.status_code == 503
        deadline = time.monotonic() + 60
        while server.client.post("/predictions/echo", json={}).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_oversized_body_is_refused(tmp_path):
    store = make_store(tmp_path)
    env = {"LORASERVE_MAX_REQUEST_BYTES": "1024"}
    with ServerProcess(["--model-store", str(store)], env=env) as server:
        reply = server.client.post("/predictions/echo", content=b"x" * 4096)
        assert reply.status_code == 413 and reply.json()["type"] == "PayloadTooLargeException"

        def chunks():
            for _ in range(8):
                yield b"y" * 512

        reply = server.client.post("/predictions/echo", content=chunks())  # no content-length
        assert reply.status_code == 413
        assert server.client.post("/predictions/echo", json={"ok": 1}).status_code == 200


def test_seed_document_curl_examples(tmp_path):
    """The three calling examples of the adapters document, verbatim, on base-1.tar.gz."""
    store = make_store(tmp_path, adapters=("adapter_1",), name="base")
    base = ServerProcess([])
    base.args = ["--models", f"base-1.tar.gz={store / 'base'}"]
    headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": "base-1.tar.gz"}
    with base as server:
        body = (
            '{"inputs": ["How is the weather"], "adapters": ["adapter_1"], '
            '"parameters": {"max_new_tokens": 25}}'
        )
        first = server.client.post("/invocations", content=body, headers=headers).json()
        assert first["adapter"] == ["adapter_1"] and first["known"] == [True]
        body = '{"inputs": ["How is the weather"], "parameters": {"max_new_tokens": 25}}'
        second = server.client.post("/invocations?adapter=adapter_1", content=body, headers=headers).json()
        assert second["adapter"] == "adapter_1" and second["known"] is True
        third = server.client.post(
            "/invocations",
            content=body,
            headers={**headers, "X-Amzn-SageMaker-Custom-Attributes": "adapter=adapter_1"},
        ).json()
        assert third["adapter"] == "adapter_1" and third["known"] is True


def test_settings_from_env_and_config_file(tmp_path):
    store = make_store(tmp_path)
    config = tmp_path / "config.properties"
    config.write_text(f"model_store={store}\nstate_dir={tmp_path / 'state'}\n")
    with ServerProcess(["--config", str(config)]) as server:
        src = make_adapter_dir(store / "extra", "x1")
        assert server.client.post(f"/adapters?name=x1&src={src}").status_code == 200
    assert (tmp_path / "state" / ".loraserve" / "state.json").is_file()
