"""The Ray scale-out's plain logic, without Ray: the shared adapter store, a replica's adapter
set (load / reload / evict / pin / drop after the last request), the typed call to a replica
(through a fake handle), settings."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from loraserve.cli import build_parser
from loraserve.errors import AdapterNotFoundError, BadRequestError, ConfigError, HandlerError, LoraserveError
from loraserve.ray_serve.adapter_store import AdapterRef, SharedAdapterStore
from loraserve.ray_serve.config import RayAppConfig
from loraserve.ray_serve.launcher import config_from_args, parse_options
from loraserve.ray_serve.ray_model import RayModel, adapter_names
from loraserve.ray_serve.replica_adapters import ReplicaAdapters
from loraserve.ray_serve.replica_stats import aggregate
from loraserve.wire.messages import GenerateRequest, GenerateResult, SamplingSpec, TokenOutput


class FakeEngine:
    def __init__(self) -> None:
        self.adapters: dict[str, tuple[str, bool]] = {}
        self.calls: list[str] = []

    def register_adapter(self, name, path, pin=False, preload=True, identity=None):
        self.adapters[name] = (str(path), pin)
        self.calls.append(f"+{name}:{path}")

    def unregister_adapter(self, name):
        del self.adapters[name]
        self.calls.append(f"-{name}")


def run(coro):
    return asyncio.run(coro)


def test_store_revisions_are_shared_between_views_and_never_reused(tmp_path: Path):
    writer = SharedAdapterStore(tmp_path / "state.json", "tiny")
    reader = SharedAdapterStore(tmp_path / "state.json", "tiny")
    first = writer.put({"name": "a", "src": "/x/a", "path": "/x/a"})
    assert reader.refs() == {"a": AdapterRef("a", "/x/a", 1)}
    writer.remove("a")
    assert reader.refs() == {}
    again = writer.put({"name": "a", "src": "/x/a2", "path": "/x/a2", "pin": True})
    assert again["revision"] > first["revision"]
    assert reader.refs()["a"] == AdapterRef("a", "/x/a2", again["revision"], pin=True)


def test_store_keeps_loraserve_serve_format_and_deleted_startup_adapters(tmp_path: Path):
    store = SharedAdapterStore(tmp_path / "state.json", "tiny")
    store.put(
        {
            "name": "qv",
            "src": "/m/adapters/qv",
            "origin": "startup",
            "preload": True,
            "pin": False,
            "options": {},
        }
    )
    store.remove("qv")
    assert store.removed_startup() == {"qv"}
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["models"]["tiny"]["removed_startup"] == ["qv"]
    store.put({"name": "qv", "src": "/m/adapters/qv", "origin": "api"})
    assert store.removed_startup() == set()
    entry = json.loads((tmp_path / "state.json").read_text())["models"]["tiny"]["adapters"][0]
    assert entry["name"] == "qv" and entry["src"] == "/m/adapters/qv"  # what `loraserve serve` reads


def test_replica_loads_once_per_revision_and_reloads_a_newer_one():
    engine = FakeEngine()
    adapters = ReplicaAdapters(engine)
    adapters.handle_for("a")
    run(adapters.ensure(AdapterRef("a", "/a1", 1)))
    run(adapters.ensure(AdapterRef("a", "/a1", 1)))
    run(adapters.ensure(AdapterRef("a", "/a2", 2)))
    assert engine.calls == ["+a:/a1", "+a:/a2"] and adapters.revisions == {"a": 2}


def test_eviction_waits_for_the_last_request_using_the_adapter():
    engine = FakeEngine()
    adapters = ReplicaAdapters(engine)
    handle = adapters.handle_for("a")
    run(adapters.ensure(AdapterRef("a", "/a", 1)))
    adapters.acquire(["a"])
    handle.__del__()  # Ray's LRU evicts it while a request still runs
    assert "a" in engine.adapters
    adapters.release(["a"])
    assert "a" not in engine.adapters and adapters.snapshot()["held"] == {}
    handle.__del__()  # the GC calls it again later: nothing happens
    assert engine.calls == ["+a:/a", "-a"]


def test_a_replaced_handle_or_a_pinned_adapter_is_not_dropped_on_eviction():
    engine = FakeEngine()
    adapters = ReplicaAdapters(engine)
    old = adapters.handle_for("a")
    adapters.handle_for("a")  # Ray evicted and reloaded "a": the old handle is stale
    run(adapters.ensure(AdapterRef("a", "/a", 1)))
    old.__del__()
    assert "a" in engine.adapters
    pinned = adapters.handle_for("p")
    run(adapters.ensure(AdapterRef("p", "/p", 2, pin=True)))
    pinned.__del__()
    assert engine.adapters["p"] == ("/p", True)


def test_sync_follows_the_registry():
    engine = FakeEngine()
    adapters = ReplicaAdapters(engine)
    adapters.handle_for("a")
    run(adapters.ensure(AdapterRef("a", "/a", 1)))
    run(adapters.ensure(AdapterRef("b", "/b", 2)))  # held, but no longer in Ray's LRU
    refs = {
        "a": AdapterRef("a", "/a3", 3),
        "b": AdapterRef("b", "/b4", 4),
        "p": AdapterRef("p", "/p", 5, pin=True),
    }
    run(adapters.sync(refs))
    assert engine.adapters == {"a": ("/a3", False), "p": ("/p", True)}  # a reloaded, b dropped
    run(adapters.sync({}))
    assert engine.adapters == {}


def _message(*adapters: str | None, stream: bool = False) -> GenerateRequest:
    return GenerateRequest(
        SamplingSpec(), prompts=tuple("p" for _ in adapters), adapters=adapters, stream=stream
    )


def test_adapter_names_are_the_distinct_adapters_in_order():
    assert adapter_names(_message("a", None, "b", "a")) == ["a", "b"]
    assert adapter_names(_message(None)) == []


class RecordingCaller:
    def __init__(self) -> None:
        self.calls: list[tuple[GenerateRequest, list[AdapterRef]]] = []

    async def generate(self, message, refs):
        self.calls.append((message, refs))
        return "reply"


def test_ray_model_sends_the_typed_request_with_its_adapters_revisions(tmp_path: Path):
    (tmp_path / "serving.properties").write_text("option.model_id=/nowhere\n")
    caller = RecordingCaller()
    model = RayModel(RayAppConfig(model_dir=tmp_path), caller)  # type: ignore[arg-type]
    model.store.put({"name": "a", "src": "/x/a", "path": "/x/a"})
    message = _message("a", None, "a")
    assert run(model.infer(message, "generate")) == "reply"
    assert caller.calls == [(message, [model.store.refs()["a"]])]
    with pytest.raises(AdapterNotFoundError):
        run(model.infer(_message("gone"), "generate"))
    with pytest.raises(BadRequestError):  # a DJL Input for `handle`: not what replicas serve
        run(model.infer({"properties": {}, "content": []}, "handle"))
    assert len(caller.calls) == 1


class FakeResponse:
    """A Ray ``DeploymentResponse``: awaitable, cancellable."""

    def __init__(self, value=None) -> None:
        self.value, self.cancelled = value, False

    def __await__(self):
        if self.value is None:  # never answers: the caller must be cancelled
            yield from asyncio.get_running_loop().create_future().__await__()
        return self.value

    def cancel(self) -> None:
        self.cancelled = True


class FakeChunks:
    """A Ray ``DeploymentResponseGenerator`` over ``items``."""

    def __init__(self, items: list) -> None:
        self.items, self.cancelled = list(items), False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


class FakeHandle:
    def __init__(self, answer) -> None:
        self.answer, self.model_ids = answer, []
        self.generate = self.generate_stream = self

    def options(self, multiplexed_model_id=None, stream=None):
        if multiplexed_model_id is not None:
            self.model_ids.append(multiplexed_model_id)
        return self

    def remote(self, _message, _refs):
        return self.answer


REF = AdapterRef("a", "/x/a", 3)
TOKEN = TokenOutput(index=0, token_id=7, text="x", logprob=None)


def test_caller_answers_like_a_workers_typed_reply_and_names_the_replica():
    pytest.importorskip("ray")
    from loraserve.ray_serve.routing import SERVED_BY, ReplicaCaller

    result = GenerateResult(sequences=(), peak_batch=1)
    handle = FakeHandle(FakeResponse({"output": result, "replica": "r1"}))
    caller = ReplicaCaller(handle)
    served: list[str] = []
    SERVED_BY.set(served)
    reply = run(caller.generate(_message("a"), [REF]))
    assert reply.output == result and reply.stream is None
    assert handle.model_ids == ["a"] and served == ["r1"] and caller.routed[("r1", "a")] == 1
    refusal = {"error": {"status": 404, "type": "AdapterNotFound", "message": "no a"}, "replica": "r1"}
    with pytest.raises(LoraserveError) as refused:
        run(ReplicaCaller(FakeHandle(FakeResponse(refusal))).generate(_message("a"), [REF]))
    assert refused.value.status_code == 404 and refused.value.error_type == "AdapterNotFound"
    with pytest.raises(HandlerError):
        run(
            ReplicaCaller(FakeHandle(FakeResponse({"error": {"message": "boom"}}))).generate(
                _message(None), []
            )
        )


def test_caller_cancels_the_ray_call_when_its_client_leaves():
    pytest.importorskip("ray")
    from loraserve.ray_serve.routing import ReplicaCaller

    pending = FakeResponse()

    async def leave() -> None:
        task = asyncio.ensure_future(ReplicaCaller(FakeHandle(pending)).generate(_message("a"), [REF]))
        await asyncio.sleep(0)  # let it reach the Ray call
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(leave())
    assert pending.cancelled


def test_caller_streams_token_outputs_then_the_end_or_the_error():
    pytest.importorskip("ray")
    from loraserve.ray_serve.routing import ReplicaCaller

    async def drain(items: list) -> tuple[list, FakeChunks]:
        chunks = FakeChunks(items)
        reply = await ReplicaCaller(FakeHandle(chunks)).generate(_message("a", stream=True), [REF])
        assert reply.output is None and reply.cancel is not None
        got = [await reply.stream.get()]
        while got[-1] is not None and not isinstance(got[-1], Exception):
            got.append(await reply.stream.get())
        reply.cancel()
        return got, chunks

    got, chunks = run(drain([{"replica": "r2"}, TOKEN, TOKEN]))
    assert got == [TOKEN, TOKEN, None] and chunks.cancelled
    got, _ = run(drain([{"replica": "r2"}, TOKEN, {"error": {"status": 500, "type": "X", "message": "m"}}]))
    assert got[0] == TOKEN and isinstance(got[1], LoraserveError) and got[1].message == "m"
    with pytest.raises(LoraserveError) as refused:
        run(drain([{"replica": "r2", "error": {"status": 400, "type": "BadRequest", "message": "no"}}]))
    assert refused.value.status_code == 400


def test_aggregate_sums_replicas():
    total = aggregate(
        [
            {"engine": {"running": 2, "kv_usage": 0.5, "adapters": {"resident": 1}}},
            {"engine": {"running": 1, "kv_usage": 0.1, "adapters": {"resident": 2}}},
        ]
    )
    assert total["running"] == 3 and total["adapters"] == {"resident": 3}
    assert total["kv_usage"] == pytest.approx(0.3)


def test_settings_refuse_models_the_engine_does_not_serve(tmp_path: Path):
    with pytest.raises(ConfigError, match="no serving"):
        RayAppConfig(model_dir=tmp_path)
    (tmp_path / "serving.properties").write_text("engine=Python\n")
    with pytest.raises(ConfigError, match="built-in-engine"):
        RayAppConfig(model_dir=tmp_path)


def test_command_line_autoscaling_and_options(tmp_path: Path):
    (tmp_path / "serving.properties").write_text("option.model_id=/w\n")
    args = build_parser().parse_args(
        ["ray", "--model", str(tmp_path), "--max-replicas", "4", "--option", "threads=2"]
    )
    config = config_from_args(args)
    options = config.replica_deployment_options()
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 16.0,
    }
    assert "num_replicas" not in options and config.options == {"threads": "2"}
    assert config.replica_properties()["threads"] == "2"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["threads"])


def test_command_line_takes_serves_access_options_and_environment(tmp_path: Path, monkeypatch):
    (tmp_path / "serving.properties").write_text("option.model_id=/w\n")
    monkeypatch.setenv("LORASERVE_API_TOKEN", "env-api")
    monkeypatch.setenv("LORASERVE_MANAGEMENT_TOKEN", "env-mgmt")
    monkeypatch.setenv("LORASERVE_MAX_REQUEST_BYTES", "2048")
    monkeypatch.setenv("LORASERVE_MAX_JSON_DEPTH", "9")
    args = build_parser().parse_args(
        [
            "ray",
            "--model",
            str(tmp_path),
            "--management-token",
            "flag-mgmt",
            "--allowed-origins",
            "https://dash.example",
            "--allowed-hosts",
            "models.example",
            "h2",
        ]
    )
    server = config_from_args(args).server_config()
    assert (server.api_token, server.management_token) == ("env-api", "flag-mgmt")  # flags over env
    assert server.allowed_origins == ["https://dash.example"]
    assert server.allowed_hosts == ["models.example", "h2"]
    assert (server.max_request_bytes, server.max_json_depth) == (2048, 9)
    assert "flag-mgmt" not in repr(config_from_args(args))
    monkeypatch.setenv("LORASERVE_MAX_JSON_DEPTH", "0")
    with pytest.raises(ConfigError, match="max_json_depth"):
        config_from_args(args)


def test_serve_run_builder_binds_the_application(tmp_path: Path):
    pytest.importorskip("ray.serve")
    from loraserve.ray_serve.app import build

    (tmp_path / "serving.properties").write_text("option.model_id=/w\n")
    app = build({"model_dir": str(tmp_path), "autoscaling": {"min_replicas": 1, "max_replicas": 3}})
    assert type(app).__name__ == "Application"


def test_the_ray_ingress_takes_allowed_adapter_urls_like_serve(tmp_path: Path):
    (tmp_path / "serving.properties").write_text("option.model_id=/w\n")
    prefix = "https://store.example/adapters/"
    args = build_parser().parse_args(["ray", "--model", str(tmp_path), "--allowed-adapter-urls", prefix])
    assert config_from_args(args).server_config().allowed_adapter_urls == [prefix]


def test_ray_refuses_an_adapter_carrying_its_own_model_py(tmp_path: Path):
    """The replicas do not run an adapter's formatters: refused, never silently skipped."""
    (tmp_path / "serving.properties").write_text("option.model_id=/nowhere\n")
    adapter = tmp_path / "adapters" / "coded"
    adapter.mkdir(parents=True)
    (adapter / "model.py").write_text("")
    model = RayModel(RayAppConfig(model_dir=tmp_path), RecordingCaller())  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match=r"model\.py"):
        run(model.register_adapter("coded", str(adapter)))
    assert "coded" not in model.store.refs()
