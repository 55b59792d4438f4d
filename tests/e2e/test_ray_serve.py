"""loraserve on a local Ray Serve cluster (127.0.0.1, tiny model, 2 engine replicas): the same
APIs and outputs as one engine, the same access rules (tokens, Origin, Host), adapter-affinity
routing, one registry for every replica that survives a replica being killed."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'loraserve[ray]'")
serve = pytest.importorskip("ray.serve")

from loraserve.engine import EngineConfig, LLMEngine, SamplingParams  # noqa: E402
from loraserve.testing.tiny import make_peft_adapter, make_tiny_llama  # noqa: E402

pytestmark = pytest.mark.slow
PARAMS = {"max_new_tokens": 6, "ignore_eos": True}
TOKENS = {"api_token": "api-tok", "management_token": "mgmt-tok"}
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _until(check, what: str, timeout: float = 120.0):
    """Poll ``check`` until it returns a truthy value (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from loraserve.ray_serve.app import build_app
    from loraserve.ray_serve.config import RayAppConfig

    root = tmp_path_factory.mktemp("ray")
    base = make_tiny_llama(root / "weights", max_positions=512)
    model = root / "tiny"
    make_peft_adapter(base, model / "adapters" / "qv", rank=4)
    extra = {
        name: make_peft_adapter(base, model / "extra" / name, rank=4, seed=seed)
        for name, seed in (("a", 5), ("b", 6), ("c", 7))
    }
    (model / "serving.properties").write_text(
        f"option.model_id={base}\noption.dtype=fp32\noption.max_lora_rank=8\n"
        "option.max_model_len=256\noption.max_loras=4\noption.threads=1\n"
    )
    reference = LLMEngine(EngineConfig(model_id=str(base), dtype="fp32", max_lora_rank=8, threads=1))
    reference.register_adapter("qv", model / "adapters" / "qv")
    for name, path in extra.items():
        reference.register_adapter(name, path)
    port = _free_port()
    env = {"PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = RayAppConfig(
            model_dir=model,
            replicas=2,
            max_adapters_per_replica=2,
            num_cpus_per_replica=0.5,
            sync_interval_s=0.5,
            **TOKENS,
        )
        serve.run(build_app(config), name=config.app_name, route_prefix="/")
        # the management token opens every route; test_access_rules_* calls without it
        auth = {"Authorization": f"Bearer {TOKENS['management_token']}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, headers=auth) as client:
            yield client, reference, extra
    finally:
        serve.shutdown()
        ray.shutdown()


def _expected(reference, prompt, adapter):
    return reference.generate([prompt], [adapter], SamplingParams(**PARAMS))[0].text


def _replicas(client) -> list[dict]:
    return client.get("/replicas").json()["replicas"]


def test_same_apis_and_outputs_as_one_engine(app):
    client, reference, _ = app
    body = {"inputs": "the quick brown", "parameters": PARAMS}
    base = client.post("/invocations", json=body)
    assert base.status_code == 200, base.text
    assert base.json()["generated_text"] == _expected(reference, "the quick brown", None)
    want = _expected(reference, "the quick brown", "qv")
    assert want != base.json()["generated_text"]
    assert client.post("/invocations", json={**body, "adapters": "qv"}).json()["generated_text"] == want
    assert client.post("/invocations?adapter=qv", json=body).json()["generated_text"] == want
    header = {"X-Amzn-SageMaker-Custom-Attributes": "adapter=qv"}
    assert client.post("/invocations", json=body, headers=header).json()["generated_text"] == want
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids[0] == "tiny" and "qv" in ids
    completion = client.post(
        "/v1/completions",
        json={
            "model": "qv",
            "prompt": "the quick brown",
            "max_tokens": 6,
            "temperature": 0,
            "ignore_eos": True,
        },
    )
    assert completion.json()["choices"][0]["text"] == want
    with client.stream(
        "POST",
        "/v1/completions",
        json={
            "model": "qv",
            "prompt": "the quick brown",
            "max_tokens": 6,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        },
    ) as reply:
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == 7
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": "qv",
            "max_tokens": 4,
            "temperature": 0,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    with client.stream("POST", "/invocations", json={**body, "adapters": "qv", "stream": True}) as reply:
        lines = [line for line in reply.iter_lines() if line]
    assert len(lines) == 6 and json.loads(lines[-1])["generated_text"] == want
    assert client.get("/ping").status_code == 200
    refused = client.post("/invocations", json={"inputs": ["a", "b"], "adapters": "qv", "stream": True})
    assert refused.status_code == 400 and "one input" in refused.text
    missing = client.post("/invocations", json={**body, "adapters": "nope"})
    assert missing.status_code == 424 and "nope" in missing.json()["message"]  # DJL's status


def test_access_rules_are_serves_behind_the_ray_proxy(app):
    """Through Ray's HTTP proxy to the ingress replica (which runs this checkout's code: the
    refusals below did not exist before the ingress installed serve's policy)."""
    client, reference, extra = app
    body = {"inputs": "the quick brown", "parameters": PARAMS}
    with httpx.Client(base_url=str(client.base_url), timeout=120) as bare:
        refused = bare.post("/invocations", json=body)
        assert refused.status_code == 401 and refused.json()["type"] == "UnauthorizedException"
        assert bare.get("/ping", headers={"Host": "evil.example"}).status_code == 400
        answered = bare.post(
            "/invocations", json=body, headers={"Authorization": f"Bearer {TOKENS['api_token']}"}
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["generated_text"] == _expected(reference, "the quick brown", None)
    cross = client.post(
        f"/models/tiny/adapters?name=x&src={extra['a']}", headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and cross.json()["type"] == "ForbiddenException"
    assert "x" not in {a["name"] for a in client.get("/models/tiny/adapters").json()["adapters"]}


def test_requests_for_an_adapter_land_on_the_replica_that_loaded_it(app):
    client, reference, extra = app
    registered = client.post(f"/models/tiny/adapters?name=a&src={extra['a']}&preload=false")
    assert registered.status_code == 200, registered.text
    body = {"inputs": "hello world", "adapters": "a", "parameters": PARAMS}
    replies = [client.post("/invocations", json=body) for _ in range(5)]
    assert {r.json()["generated_text"] for r in replies} == {_expected(reference, "hello world", "a")}
    served_by = {r.headers["x-loraserve-replica"] for r in replies}
    assert len(served_by) == 1
    by_replica = {r["replica"]: r for r in _replicas(client)}
    holder = by_replica[served_by.pop()]
    assert "a" in holder["held"] and holder["served"]["a"] == 5
    assert all("a" not in r["held"] for k, r in by_replica.items() if k != holder["replica"])
    metrics = client.get("/metrics").text
    assert (
        f'loraserve_replica_requests_total{{adapter="a",model="tiny",replica="{holder["replica"]}"}} 5.0'
        in metrics
    )
    # update: a new revision, reloaded by the replica holding the old one
    update = client.post(f"/models/tiny/adapters/a/update?src={extra['c']}")
    assert update.status_code == 200, update.text
    after = client.post("/invocations", json=body).json()["generated_text"]
    assert after == _expected(reference, "hello world", "c")


def test_register_pinned_reaches_every_replica_and_unregister_leaves_none(app):
    client, reference, extra = app
    assert client.post(f"/models/tiny/adapters?name=b&src={extra['b']}&pin=true").status_code == 200
    replicas = _replicas(client)
    assert len(replicas) == 2 and all("b" in r["pinned"] for r in replicas)
    body = {"inputs": "lora adapters", "adapters": "b", "parameters": PARAMS}
    assert client.post("/invocations", json=body).json()["generated_text"] == _expected(
        reference, "lora adapters", "b"
    )
    for name in ("a", "b"):
        assert client.delete(f"/models/tiny/adapters/{name}").status_code == 200
    assert all("a" not in r["held"] and "b" not in r["held"] for r in _replicas(client))
    assert client.post("/invocations", json=body).status_code == 424
    assert [a["name"] for a in client.get("/models/tiny/adapters").json()["adapters"]] == ["qv"]


def test_killing_a_replica_loses_no_registration(app):
    client, reference, extra = app
    assert client.post(f"/models/tiny/adapters?name=a&src={extra['a']}").status_code == 200
    assert client.post(f"/models/tiny/adapters?name=b&src={extra['b']}&pin=true").status_code == 200
    body = {"inputs": "hello world", "adapters": "a", "parameters": PARAMS}
    victim = client.post("/invocations", json=body).headers["x-loraserve-replica"]
    actor = ray.get_actor(f"SERVE_REPLICA::loraserve#LoraserveEngine#{victim}", namespace="serve")
    ray.kill(actor, no_restart=True)

    def served_elsewhere():
        reply = client.post("/invocations", json=body)
        return reply if reply.status_code == 200 and reply.headers["x-loraserve-replica"] != victim else None

    reply = _until(served_elsewhere, "a request for the adapter served by another replica")
    assert reply.json()["generated_text"] == _expected(reference, "hello world", "a")
    names = {a["name"] for a in client.get("/models/tiny/adapters").json()["adapters"]}
    assert names == {"qv", "a", "b"}
    replicas = _until(
        lambda: len(_replicas(client)) == 2 and _replicas(client), "Ray Serve to replace the killed replica"
    )
    assert victim not in {r["replica"] for r in replicas}
    assert all("b" in r["pinned"] for r in replicas)  # the new replica read the registry at start
