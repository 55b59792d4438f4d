"""Workflows, templates and SageMaker multi-model endpoints against a real server."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from loraserve.testing import copy_adaptecho
from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_adapter_dir, read_events


def seed_workflow(name: str, model_url: str, adapter_src: str, adapter: str = "a1") -> dict:
    """The adapters document's workflow.json example, with its URLs filled in."""
    return {
        "name": name,
        "version": "0.1",
        "models": {"m": model_url},
        "configs": {"adapters": {adapter: {"model": "m", "src": adapter_src}}},
        "workflow": {"out": ["adapter", adapter, "in"]},
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    copy_adaptecho(root / "models" / "adaptecho")
    make_adapter_dir(root / "adapters", "url1")
    make_adapter_dir(root / "adapters", "url2")
    return root


def _write(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def test_seed_workflow_and_sharing(store, tmp_path):
    log = tmp_path / "events.jsonl"
    model = store / "models" / "adaptecho"
    first = _write(store / "wf" / "adapter1.json", seed_workflow("adapter1", str(model), "../adapters/url1"))
    second = _write(
        store / "wf" / "adapter2.json",
        seed_workflow("adapter2", str(model), "../adapters/url2", adapter="a2"),
    )
    with ServerProcess(["--model-store", str(store)], env={"ADAPTECHO_LOG": str(log)}) as server:
        client = server.client
        assert client.post(f"/workflows?url={first}").json() == {"status": 'Workflow "adapter1" registered.'}
        assert client.post(f"/workflows?url={second}").status_code == 200
        answer = client.post("/predictions/adapter1", json={"inputs": "hi"}).json()
        assert answer["adapter"] == "a1" and answer["known"] is True
        assert client.post("/predictions/adapter2", json={"inputs": "hi"}).json()["adapter"] == "a2"
        metrics = client.get("/metrics").text  # a workflow's model calls are counted like any other
        assert 'loraserve_requests_total{adapter="a1",code="200",model="m"} 1.0' in metrics
        assert 'loraserve_requests_total{adapter="a2",code="200",model="m"} 1.0' in metrics
        loads = [e for e in read_events(log) if e["event"] == "load"]
        assert len(loads) == 1  # one shared model, loaded once
        models = [m["modelName"] for m in client.get("/models").json()["models"]]
        assert models == ["m"]
        described = client.get("/workflows/adapter1").json()[0]
        assert [m["modelName"] for m in described["models"]] == ["m"]
        listed = client.get("/workflows").json()["workflows"]
        assert {w["workflowName"] for w in listed} == {"adapter1", "adapter2"}
        assert client.delete("/workflows/adapter1").status_code == 200
        assert [m["modelName"] for m in client.get("/models").json()["models"]] == ["m"]
        adapters = [a["name"] for a in client.get("/models/m/adapters").json()["adapters"]]
        assert adapters == ["a2"]  # a1 left with its workflow
        assert client.post("/predictions/adapter1", json={}).status_code == 404
        assert client.delete("/workflows/adapter2").status_code == 200
        assert client.get("/models").json()["models"] == []
        assert client.put("/workflows/adapter2?min_worker=2").status_code == 404


def test_adapter_template(store):
    with ServerProcess(["--model-store", str(store)]) as server:
        query = "template=adapter&adapter=tmpl&url=adapters/url1&model=models/adaptecho"
        assert server.client.post(f"/workflows?{query}").status_code == 200
        answer = server.client.post("/predictions/tmpl", json={"inputs": "x"}).json()
        assert answer["adapter"] == "tmpl" and answer["known"] is True
        missing = server.client.post("/workflows?template=adapter&adapter=x")
        assert missing.status_code == 400 and "model" in missing.json()["message"]
        custom = _write(
            store / "t.json", {"name": "$n", "models": {"m": "$m"}, "workflow": {"out": ["m", "in"]}}
        )
        reply = server.client.post(f"/workflows?template={custom}&n=plain&m=models/adaptecho")
        assert reply.status_code == 200
        assert server.client.post("/predictions/plain", json={"inputs": "y"}).json()["adapter"] is None
        status = server.client.put("/workflows/plain?min_worker=1").json()["status"]
        assert status.startswith('Workflow "plain" worker scaled. New Worker configuration min workers:1')


@pytest.mark.parametrize(
    "workflow,fragment",
    [
        ({"name": "w", "models": {"m": "models/adaptecho"}, "workflow": {"x": ["m", "in"]}}, '"out"'),
        ({"name": "w", "models": {}, "workflow": {"out": ["nomodel", "in"]}}, "unknown model or function"),
        (
            {"name": "w", "models": {"m": "models/adaptecho"}, "workflow": {"out": ["m", "nothing"]}},
            "unknown variable",
        ),
        (
            {
                "name": "w",
                "models": {"m": "models/adaptecho"},
                "workflow": {"out": ["m", "a"], "a": ["m", "b"], "b": ["id", "a"]},
            },
            "cycle",
        ),
        (
            {"name": "w", "models": {"m": "models/adaptecho"}, "workflow": {"out": ["adapter", "zz", "in"]}},
            "configs.adapters",
        ),
        (
            {
                "name": "w",
                "models": {"m": "models/adaptecho"},
                "configs": {"adapters": {"a": {"model": "other", "src": "x"}}},
                "workflow": {"out": "in"},
            },
            "does not declare",
        ),
        ({"models": {}}, '"name"'),
        (
            {
                "name": "w",
                "models": {"m": "models/adaptecho"},
                "workflow": {"out": ["functionsApply", ["m", "nofn"], "in"]},
            },
            "unknown model or function",
        ),
        (
            {"name": "w", "models": {"m": "models/missing"}, "workflow": {"out": ["m", "in"]}},
            "does not exist",
        ),
    ],
)
def test_invalid_workflows_are_refused(store, workflow, fragment):
    path = _write(store / "bad" / "workflow.json", workflow)
    with ServerProcess(["--model-store", str(store)]) as server:
        reply = server.client.post(f"/workflows?url={path}")
        assert reply.status_code == 400, reply.text
        assert fragment in reply.json()["message"]
        assert server.client.get("/workflows").json()["workflows"] == []
        assert server.client.get("/models").json()["models"] == []


def test_workflow_directory_served_at_startup_with_ensemble(store):
    _write(
        store / "pipeline" / "workflow.json",
        {
            "name": "pipeline",
            "models": {"m": "../models/adaptecho"},
            "configs": {"adapters": {"a1": {"model": "m", "src": "../adapters/url1"}}},
            "workflow": {
                "plain": ["m", "in"],
                "tuned": ["adapter", "a1", "in"],
                "out": ["ensemble", "plain", "tuned"],
            },
        },
    )
    args = ["--model-store", str(store / "pipeline"), "--allowed-adapter-roots", str(store)]
    with ServerProcess(args) as server:
        answer = server.client.post("/invocations", json={"inputs": "z"}).json()
        assert isinstance(answer, list), answer
        assert [a["adapter"] for a in answer] == [None, "a1"]
    _write(
        store / "fan" / "workflow.json",
        {
            "name": "fan",
            "models": {"m": "../models/adaptecho"},
            "workflow": {"outs": ["functionsApply", ["m", "id"], "in"], "out": ["ensemble", "outs"]},
        },
    )
    with ServerProcess(["--model-store", str(store / "fan")]) as server:
        first, second = server.client.post("/invocations", json={"inputs": "w"}).json()
        assert first["input"] == {"inputs": "w"} and second == {"inputs": "w"}


def _tar_model(path: Path, source: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source, arcname=".")
    path.write_bytes(buffer.getvalue())


def test_multi_model_endpoint_loads_on_demand_and_evicts_lru(tmp_path):
    store = tmp_path / "mme"
    store.mkdir()
    copy_adaptecho(store / "alpha", adapters=("ad",))
    copy_adaptecho(tmp_path / "beta-src")
    _tar_model(store / "beta.tar.gz", tmp_path / "beta-src")
    copy_adaptecho(store / "gamma")
    log = tmp_path / "events.jsonl"
    args = ["--model-store", str(store), "--max-loaded-models", "2"]
    with ServerProcess(args, env={"ADAPTECHO_LOG": str(log), "LORASERVE_MODEL_STORE": ""}) as server:
        client = server.client

        def call(target: str, **body) -> dict:
            reply = client.post(
                "/invocations",
                json={"inputs": "q", **body},
                headers={"X-Amzn-SageMaker-Target-Model": target},
            )
            assert reply.status_code == 200, reply.text
            return reply.json()

        # the store itself holds three models: all load at start-up; drop them to test on-demand
        for name in [m["modelName"] for m in client.get("/models").json()["models"]]:
            client.delete(f"/models/{name}")
        assert call("alpha", adapters="ad")["known"] is True
        assert call("beta")["input"] == {"inputs": "q"}
        loaded = {m["modelName"] for m in client.get("/models").json()["models"]}
        assert loaded == {"alpha", "beta"}
        assert call("beta.tar.gz")["input"] == {"inputs": "q"}  # SageMaker names the archive
        assert {m["modelName"] for m in client.get("/models").json()["models"]} == loaded
        call("alpha")  # alpha is now the most recently used
        call("gamma")  # evicts beta
        loaded = {m["modelName"] for m in client.get("/models").json()["models"]}
        assert loaded == {"alpha", "gamma"}
        assert call("beta")["input"] == {"inputs": "q"}  # reloaded transparently, alpha evicted
        assert {m["modelName"] for m in client.get("/models").json()["models"]} == {"gamma", "beta"}
        reply = client.post("/invocations", json={}, headers={"X-Amzn-SageMaker-Target-Model": "nope"})
        assert reply.status_code == 404
        # MME management calls: JSON body with model_name and url
        body = {"model_name": "alpha", "url": str(store / "alpha")}
        assert client.post("/models", json=body).status_code == 200
        assert client.delete("/models/alpha").status_code == 200
