"""Process-level faults of the serving layer: batches being collected when a worker dies or the
model goes away, adapters whose source vanished, and a model with no live worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_adapter_dir, make_store, read_events

BATCHING = "engine=Python\nbatch_size=3\nmax_batch_delay=60000\n"


def _describe(client: httpx.Client) -> dict:
    return client.get("/models/echo").json()[0]["models"][0]


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _post(server: ServerProcess, body: dict, timeout: float = 30.0) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=timeout) as client:
        return client.post("/predictions/echo", json=body)


def _worker_pid(client: httpx.Client) -> int:
    return _describe(client)["workerGroups"][0]["workers"][0]["pid"]


def test_batch_being_collected_survives_a_worker_kill(tmp_path):
    store = make_store(tmp_path, properties=BATCHING)
    with ServerProcess(["--model-store", str(store)]) as server, ThreadPoolExecutor(3) as pool:
        pid = _worker_pid(server.client)
        first = [pool.submit(_post, server, {"n": i}) for i in range(2)]
        _wait(lambda: _describe(server.client)["requestInBatch"] == 2)
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: server.client.get("/ping").status_code == 200)  # restarted
        third = pool.submit(_post, server, {"n": 2})  # fills the batch of 3
        replies = [f.result(timeout=60) for f in [*first, third]]
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert {r.json()["pid"] for r in replies} != {pid}
    assert all(r.json()["batch_size"] == 3 for r in replies)


def test_batch_being_collected_is_answered_when_the_model_is_unregistered(tmp_path):
    store = make_store(tmp_path, properties=BATCHING)
    with ServerProcess(["--model-store", str(store)]) as server, ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(_post, server, {"n": i}) for i in range(2)]
        _wait(lambda: _describe(server.client)["requestInBatch"] == 2)
        assert server.client.delete("/models/echo").status_code == 200
        replies = [f.result(timeout=30) for f in pending]
    assert [r.status_code for r in replies] == [503, 503]
    assert all("unregistered" in r.json()["message"] for r in replies)


def test_vanished_adapter_source_does_not_stop_a_restart(tmp_path):
    store = make_store(tmp_path)
    src = make_adapter_dir(store / "extra", "gone")
    with ServerProcess(["--model-store", str(store)]) as server:
        client = server.client
        assert client.post(f"/models/echo/adapters?name=gone&src={src}").status_code == 200
        shutil.rmtree(src)
        assert client.post("/predictions/echo", json={"crash": True}).status_code == 503
        _wait(lambda: client.get("/ping").status_code == 200)
        answer = client.post("/predictions/echo", json={"adapters": "a1"})
        assert answer.status_code == 200 and answer.json()["known"] is True
        gone = client.get("/models/echo/adapters/gone").json()
        assert gone["state"] == "failed" and "does not exist" in gone["error"]
        console = client.get("/console/state").json()["models"][0]["adapters"]
        shown = next(a for a in console if a["name"] == "gone")
        assert shown["tier"] == "failed" and "does not exist" in shown["error"]  # the console says why
        refused = client.post("/predictions/echo", json={"adapters": "gone"})
        assert refused.status_code == 503 and "failed to load" in refused.json()["message"]
        names = sorted(a["name"] for a in client.get("/models/echo/adapters").json()["adapters"])
        assert names == ["a1", "a2", "gone"]
        make_adapter_dir(store / "extra", "gone")  # the source is back: an update fixes it
        assert client.post("/models/echo/adapters/gone/update").status_code == 200
        assert client.get("/models/echo/adapters/gone").json()["state"] == "ready"
        assert client.post("/predictions/echo", json={"adapters": "gone"}).json()["known"] is True


def test_adapter_that_fails_to_restore_is_kept_in_the_saved_registry(tmp_path):
    store = make_store(tmp_path)
    src = make_adapter_dir(store / "extra", "saved")
    args = ["--model-store", str(store)]
    with ServerProcess(args) as server:
        assert server.client.post(f"/models/echo/adapters?name=saved&src={src}").status_code == 200
    shutil.rmtree(src)
    with ServerProcess(args) as server:
        saved = server.client.get("/models/echo/adapters/saved").json()
        assert saved["state"] == "failed" and "does not exist" in saved["error"]
        other = make_adapter_dir(store / "extra", "other")
        assert server.client.post(f"/models/echo/adapters?name=other&src={other}").status_code == 200
        assert server.client.delete("/models/echo/adapters/a1").status_code == 200  # saves again
    state = json.loads((store / ".loraserve" / "state.json").read_text())
    assert {a["name"] for a in state["models"]["echo"]["adapters"]} == {"saved", "other"}


def test_no_live_worker_is_reported_and_fails_fast(tmp_path):
    store = make_store(tmp_path)
    flag = tmp_path / "fail-load"
    with ServerProcess(["--model-store", str(store)], env={"ADAPTECHO_FAIL_LOAD": str(flag)}) as server:
        client = server.client
        flag.touch()
        assert client.post("/predictions/echo", json={"crash": True}).status_code == 503
        _wait(lambda: _describe(client)["status"] == "FAILED")
        assert "restarting its worker failed" in _describe(client)["error"]
        ping = client.get("/ping")
        assert ping.status_code == 503 and ping.json()["models"] == {"echo": "FAILED"}
        refused = _post(server, {}, timeout=10)
        assert refused.status_code == 503 and "no live worker" in refused.json()["message"]
        flag.unlink()  # the next restart attempt succeeds
        _wait(lambda: client.get("/ping").status_code == 200)
        assert _post(server, {}).status_code == 200


def test_workers_hit_by_the_shutdown_signal_are_not_restarted(tmp_path):
    store = make_store(tmp_path, properties="engine=Python\nminWorkers=2\nmaxWorkers=2\n")
    log = tmp_path / "events.jsonl"
    server = ServerProcess(["--model-store", str(store)], env={"ADAPTECHO_LOG": str(log)})
    with server:
        group = server.process.pid  # the server leads its own process group, workers included
    _wait(lambda: not _group_alive(group))  # every process it ever spawned has exited
    assert [e["event"] for e in read_events(log)].count("load") == 2


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
