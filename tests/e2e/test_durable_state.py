"""Durable registry state against a real server: full disk, restarts, model re-registration,
archive updates, and what a handler may see of a request's headers."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from loraserve.testing.disk import fill_up, mounted_tmpfs
from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_adapter_dir, make_store, read_events


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 256 KiB tmpfs for the state dir (unmounted afterwards)."""
    with mounted_tmpfs(tmp_path / "state", "256k") as mount:
        yield mount


def _names(server: ServerProcess) -> list[str]:
    return sorted(a["name"] for a in server.client.get("/models/echo/adapters").json()["adapters"])


def test_full_disk_refuses_with_507_and_a_restart_shows_what_was_acknowledged(tmp_path, small_fs):
    store = make_store(tmp_path)
    src = make_adapter_dir(store / "extra", "kept")
    lost = make_adapter_dir(store / "extra", "lost")
    args = ["--model-store", str(store), "--state-dir", str(small_fs)]
    with ServerProcess(args) as server:
        assert server.client.post(f"/models/echo/adapters?name=kept&src={src}").status_code == 200
        filler = fill_up(small_fs)
        reply = server.client.post(f"/models/echo/adapters?name=lost&src={lost}")
        assert reply.status_code == 507, reply.text
        assert reply.json()["type"] == "InsufficientStorageException"
        assert "state.json" in reply.json()["message"]
        assert server.client.delete("/models/echo/adapters/kept").status_code == 507
        assert server.client.delete("/models/echo/adapters/a1").status_code == 507  # start-up one
        update = server.client.post("/models/echo/adapters/kept/update?k=v")
        assert update.status_code == 507
        assert _names(server) == ["a1", "a2", "kept"]  # nothing changed in memory either
        assert server.client.get("/models/echo/adapters/kept").json()["options"] == {}
        assert not list(small_fs.rglob(".state-*"))
        filler.unlink()
        assert server.client.delete("/models/echo/adapters/a2").status_code == 200
    with ServerProcess(args) as server:
        assert _names(server) == ["a1", "kept"]


def test_damaged_state_is_kept_aside_and_the_server_starts(tmp_path):
    store = make_store(tmp_path)
    src = make_adapter_dir(store / "extra", "kept")
    args = ["--model-store", str(store)]
    with ServerProcess(args) as server:
        assert server.client.post(f"/models/echo/adapters?name=kept&src={src}").status_code == 200
    state = store / ".loraserve" / "state.json"
    whole = state.read_text()
    state.write_text(whole[: len(whole) // 2])
    with ServerProcess(args) as server:
        assert _names(server) == ["a1", "a2"]
        other = make_adapter_dir(store / "extra", "other")
        assert server.client.post(f"/models/echo/adapters?name=other&src={other}").status_code == 200
    (aside,) = state.parent.glob("state.json.damaged-*")
    assert aside.read_text() == whole[: len(whole) // 2]


def test_unregistered_model_does_not_pass_its_adapters_to_a_new_one(tmp_path):
    store = make_store(tmp_path)
    src = make_adapter_dir(store / "extra", "kept")
    args = ["--model-store", str(store)]
    with ServerProcess(args) as server:
        assert server.client.post(f"/models/echo/adapters?name=kept&src={src}").status_code == 200
        assert server.client.delete("/models/echo").status_code == 200
        url = store / "echo"
        assert server.client.post(f"/models?url={url}&model_name=echo").status_code == 200
        assert _names(server) == ["a1", "a2"]
    with ServerProcess(args) as server:
        assert _names(server) == ["a1", "a2"]


def _archive(path: Path, content: str) -> None:
    folder = make_adapter_dir(path.parent / "build", "arch")
    (folder / "weights.txt").write_text(content)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="arch")


def test_update_rereads_a_replaced_archive(tmp_path):
    store = make_store(tmp_path)
    archive = store / "extra" / "arch.tar.gz"
    _archive(archive, "v1")
    log = tmp_path / "events.jsonl"
    with ServerProcess(["--model-store", str(store)], env={"ADAPTECHO_LOG": str(log)}) as server:
        assert server.client.post(f"/models/echo/adapters?name=arch&src={archive}").status_code == 200
        _archive(archive, "v2")
        assert server.client.post("/models/echo/adapters/arch/update").status_code == 200
    events = [e for e in read_events(log) if e.get("name") == "arch"]
    first = next(e for e in events if e["event"] == "register")
    updated = next(e for e in events if e["event"] == "update")
    assert (Path(updated["src"]) / "weights.txt").read_text() == "v2"
    assert updated["src"] != first["src"]


PROPERTIES_MODEL = """
from djl_python import Input, Output


def handle(inputs: Input):
    if inputs.is_empty():
        return None
    return Output().add_as_json({"properties": inputs.get_properties()})
"""


def test_handler_never_sees_the_servers_token(tmp_path):
    model = tmp_path / "store" / "props"
    model.mkdir(parents=True)
    (model / "model.py").write_text(PROPERTIES_MODEL)
    (model / "serving.properties").write_text("engine=Python\n")
    args = ["--model-store", str(tmp_path / "store"), "--api-token", "s3cret"]
    with ServerProcess(args) as server:
        reply = server.client.post(
            "/predictions/props",
            json={"x": 1},
            headers={"Authorization": "Bearer s3cret", "Proxy-Authorization": "Basic eA==", "X-Trace": "t1"},
        )
        assert reply.status_code == 200, reply.text
        properties = {k.lower(): v for k, v in reply.json()["properties"].items()}
    assert properties["x-trace"] == "t1"
    assert "authorization" not in properties and "proxy-authorization" not in properties
    assert "s3cret" not in reply.text
