"""A bounded soak of the built-in engine behind the server: 8 clients generate with adapters
while 300 register/update/unregister operations run, /metrics is scraped all along, one worker
is killed (its recovery time is reported), one oversized prompt is sent, and for 20 operations
the state directory's file system is full. Nothing may hang, nothing may fail with a 5xx but
the killed worker's in-flight requests and the full disk's 507s, afterwards no KV slot or LoRA
slot is held, and a restarted server has exactly the registrations that were acknowledged."""

from __future__ import annotations

import collections
import os
import random
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from loraserve.testing.disk import fill_up, mounted_tmpfs
from loraserve.testing.server import ServerProcess
from loraserve.testing.tiny import make_peft_adapter
from tests.e2e.helpers import make_engine_store

pytestmark = pytest.mark.slow
CLIENTS, OPERATIONS, KILL_AT = 8, 300, 60
FULL_AT, FULL_OPS = 200, 20  # operations run while the state directory's disk is full
NAMES = [f"s{i}" for i in range(6)]
TIMEOUT_S = 60.0  # a request that takes longer counts as hung (a restart included)
KILL_GRACE_S = 1.0  # requests sent this soon after the kill may still reach the dead worker
PROPERTIES = (
    "option.max_lora_rank=8\noption.max_model_len=256\noption.max_loras=2\noption.max_rolling_batch_size=8\n"
)


@dataclass
class Soak:
    server: ServerProcess
    sources: list[str]
    state_dir: Path
    registered: set[str] = field(default_factory=set)  # acknowledged, so durable
    filler: Path | None = None  # while set, the state directory's disk is full
    recovery_s: float | None = None  # SIGKILL of the worker → the model answers /ping again
    done: threading.Event = field(default_factory=threading.Event)
    killed_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    bad: list[str] = field(default_factory=list)

    def record(
        self,
        kind: str,
        started: float,
        reply: httpx.Response | None,
        error: str = "",
        expected: tuple[int, ...] = (200,),
    ) -> None:
        """Count one outcome; anything but the expected codes (or a WorkerDied 503 of a
        request in flight when the worker was killed) is a failure."""
        status = reply.status_code if reply is not None else "hung"
        kind_of = _error_type(reply) if reply is not None and status != 200 else ""
        with self.lock:
            self.outcomes[(kind, status, kind_of)] += 1
            if status in expected or self._killed_in_flight(started, status, kind_of):
                return
            detail = reply.text[:200] if reply is not None else error
            self.bad.append(f"{kind} {status} {kind_of}: {detail}")

    def _killed_in_flight(self, started: float, status: object, kind_of: str) -> bool:
        return (
            status == 503
            and kind_of == "WorkerDiedException"
            and self.killed_at is not None
            and started < self.killed_at + KILL_GRACE_S
        )


def _error_type(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return "not-json"
    if not isinstance(body, dict):
        return ""
    error = body.get("error")  # OpenAI's shape, else DJL's
    return str(error.get("type", "")) if isinstance(error, dict) else str(body.get("type", ""))


def _http(soak: Soak) -> httpx.Client:
    """One connection pool per thread (a client per request costs more than the request)."""
    return httpx.Client(base_url=soak.server.base_url, timeout=TIMEOUT_S)


def _call(
    soak: Soak,
    client: httpx.Client,
    kind: str,
    method: str,
    url: str,
    expected: tuple[int, ...] = (200,),
    **kwargs,
) -> httpx.Response | None:
    started = time.monotonic()
    try:
        reply = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        soak.record(kind, started, None, f"no answer in {TIMEOUT_S:.0f}s: {exc!r}", expected)
        return None
    soak.record(kind, started, reply, expected=expected)
    return reply


def _client(soak: Soak, seed: int) -> None:
    rng = random.Random(seed)
    with _http(soak) as client:
        while not soak.done.is_set():
            _generate(soak, client, rng, seed)


def _generate(soak: Soak, client: httpx.Client, rng: random.Random, seed: int) -> None:
    adapter = rng.choice([None, "qv", *NAMES])
    body = {
        "inputs": f"client {seed} says {rng.randint(0, 999)}",
        "parameters": {"max_new_tokens": rng.randint(2, 12), "ignore_eos": True},
    }
    if adapter:
        body["adapters"] = adapter
    # 424 (DJL's status): the adapter is not registered now (or was unregistered before the
    # request ran); 404 if the engine itself finds it gone after the front's check
    _call(soak, client, "generate", "POST", "/predictions/tiny", expected=(200, 404, 424), json=body)


def _scraper(soak: Soak) -> None:
    with _http(soak) as client:
        while not soak.done.wait(0.5):
            _call(soak, client, "metrics", "GET", "/metrics")


def _operate(soak: Soak, client: httpx.Client, rng: random.Random, index: int) -> None:
    if index == FULL_AT:
        soak.filler = fill_up(soak.state_dir)
    elif index == FULL_AT + FULL_OPS and soak.filler is not None:
        soak.filler.unlink()
        soak.filler = None
    name = rng.choice(NAMES)
    src = rng.choice(soak.sources)
    ok = (200, 507) if soak.filler is not None else (200,)  # 507: not saved, so not done
    if name not in soak.registered:
        url = f"/models/tiny/adapters?name={name}&src={src}"
        if _ok(_call(soak, client, "register", "POST", url, expected=ok)):
            soak.registered.add(name)
    elif rng.random() < 0.5:
        _call(soak, client, "update", "POST", f"/models/tiny/adapters/{name}/update?src={src}", expected=ok)
    elif _ok(_call(soak, client, "unregister", "DELETE", f"/models/tiny/adapters/{name}", expected=ok)):
        soak.registered.discard(name)
    if index == KILL_AT:
        _kill_worker(soak)
    if index == OPERATIONS // 2:  # a prompt far beyond max_model_len: a 4xx, and harmless
        _call(
            soak,
            client,
            "oversized",
            "POST",
            "/predictions/tiny",
            expected=(400, 413),
            json={"inputs": "lorem ipsum " * 90_000, "parameters": {"max_new_tokens": 4}},
        )


def _ok(reply: httpx.Response | None) -> bool:
    return reply is not None and reply.status_code == 200


def _kill_worker(soak: Soak) -> None:
    pid = next(iter(_pids(soak.server)))
    with soak.lock:
        soak.killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # the rest of the operations run against the restarted engine, not the recovery window
    deadline = time.monotonic() + TIMEOUT_S
    while not _pids(soak.server) - {pid} or soak.server.client.get("/ping").status_code != 200:
        assert time.monotonic() < deadline, "the model did not come back after its worker was killed"
        time.sleep(0.1)
    soak.recovery_s = time.monotonic() - soak.killed_at


def _pids(server: ServerProcess) -> set[int]:
    described = server.client.get("/models/tiny").json()[0]["models"][0]
    return {w["pid"] for w in described["workerGroups"][0]["workers"] if w["status"] == "READY"}


def _gauges(server: ServerProcess) -> dict[str, float]:
    text = server.client.get("/metrics", timeout=TIMEOUT_S).text
    wanted = {
        "loraserve_running_batch_size": "running",
        "loraserve_waiting_requests": "waiting",
        "loraserve_kv_cache_usage_ratio": "kv_usage",
        "loraserve_adapter_references": "lora_refs",
    }  # where the engine exports it
    figures: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'(\w+)\{model="tiny"(?:,tier="(\w+)")?\} ([\d.e+-]+)$', line)
        if match and match[1] in wanted:
            figures[wanted[match[1]]] = float(match[3])
        elif match and match[1] == "loraserve_adapters":
            figures[match[2]] = float(match[3])
    return figures


def _settled(server: ServerProcess, timeout: float = 30.0) -> dict[str, float]:
    """The engine's figures once nothing runs: they must come back to zero."""
    deadline = time.monotonic() + timeout
    while True:
        figures = _gauges(server)
        held = [figures.get(k) for k in ("running", "waiting", "kv_usage")]
        if held == [0, 0, 0] and figures.get("lora_refs", 0) == 0:
            return figures
        assert time.monotonic() < deadline, f"the engine never settled: {figures}"
        time.sleep(0.2)


def test_soak(tmp_path):
    store, base = make_engine_store(tmp_path, properties=PROPERTIES)
    sources = [make_peft_adapter(base, store / "extra" / f"src{i}", rank=4, seed=10 + i) for i in (0, 1)]
    with mounted_tmpfs(tmp_path / "state", "1m") as state_dir:
        args = ["--model-store", str(store), "--state-dir", str(state_dir)]
        with ServerProcess(args, log_path=tmp_path / "server.log") as server:
            soak = Soak(server, [str(s) for s in sources], state_dir)
            _run(soak)
            outcomes = dict(soak.outcomes)
            print(f"soak: worker back {soak.recovery_s:.1f}s after its SIGKILL; outcomes {outcomes}")
            assert not soak.bad, f"{len(soak.bad)} failures, e.g. {soak.bad[:5]}; outcomes {outcomes}"
            assert soak.outcomes[("generate", 200, "")] > CLIENTS, dict(soak.outcomes)
            assert any(kind == 507 for (_, kind, _) in soak.outcomes), "the full disk was never hit"
            _check_nothing_held(soak, server, sources)
        with ServerProcess(args) as restarted:  # what was acknowledged, and nothing else
            listed = restarted.client.get("/models/tiny/adapters").json()["adapters"]
            assert {a["name"] for a in listed} == {"qv", "fresh0", "fresh1", "fresh2"}
    shutil.rmtree(store / "extra", ignore_errors=True)


def _run(soak: Soak) -> None:
    threads = [threading.Thread(target=_client, args=(soak, i)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=_scraper, args=(soak,)))
    for thread in threads:
        thread.start()
    rng = random.Random(0)
    try:
        with _http(soak) as client:
            for index in range(OPERATIONS):
                _operate(soak, client, rng, index)
    finally:
        soak.done.set()
        for thread in threads:
            thread.join(TIMEOUT_S + 5)


def _check_nothing_held(soak: Soak, server: ServerProcess, sources: list) -> None:
    """No KV slot in use, and no LoRA slot held by a reference nobody will release: every
    adapter still resident is a registered one, and each slot can take a new adapter."""
    for name in sorted(soak.registered):
        assert server.client.delete(f"/models/tiny/adapters/{name}").status_code == 200
    figures = _settled(server)
    assert figures.get("resident", 0) <= figures.get("registered", 0), figures
    for i, name in enumerate(["fresh0", "fresh1", "fresh2"]):  # more than max_loras=2 slots
        src = sources[i % len(sources)]
        assert server.client.post(f"/models/tiny/adapters?name={name}&src={src}").status_code == 200
        reply = server.client.post(
            "/predictions/tiny",
            timeout=TIMEOUT_S,
            json={"inputs": "after the soak", "adapters": name, "parameters": {"max_new_tokens": 4}},
        )
        assert reply.status_code == 200, reply.text
    _settled(server)
