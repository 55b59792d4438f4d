"""Adapters from where they are stored: an http(s) archive under an allowed URL prefix is
fetched, checked and served; a wrong checksum, a prefix not allowed, a redirect out of it and
a store that fails are clear 4xx/502s naming the source, and register nothing."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from loraserve.testing.server import ServerProcess
from tests.e2e.helpers import make_engine_store


class _Store(http.server.SimpleHTTPRequestHandler):
    failures = 0  # answers 503 to the first ``failures`` requests for /flaky/

    def do_GET(self) -> None:
        if self.path.startswith("/elsewhere"):
            self.send_response(302)
            self.send_header("Location", "http://localhost:1/evil.tar.gz")
            self.end_headers()
            return
        if self.path.startswith("/flaky/") and _Store.failures > 0:
            _Store.failures -= 1
            self.send_error(503)
            return
        self.path = self.path.replace("/flaky/", "/")
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def store_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: _Store(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _publish_files(adapter: Path, files: Path) -> None:
    """The adapter as separate files with a manifest (qv/), one with a wrong hash (badsha/) and
    one whose manifest names a path outside its folder (escape/)."""
    listing = []
    for path in sorted(adapter.iterdir()):
        (files / "qv").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, files / "qv" / path.name)
        listing.append({"path": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    (files / "qv" / "manifest.json").write_text(json.dumps({"files": listing}))
    shutil.copytree(files / "qv", files / "badsha")
    wrong = [dict(e, sha256="0" * 64) if e["path"].endswith(".safetensors") else e for e in listing]
    (files / "badsha" / "manifest.json").write_text(json.dumps({"files": wrong}))
    (files / "escape").mkdir()
    escaping = {"files": [{"path": "../qv/x", "sha256": "0" * 64}]}
    (files / "escape" / "manifest.json").write_text(json.dumps(escaping))


def test_an_allowed_archive_url_is_fetched_checked_and_served(tmp_path, store_server):
    served, base_url = store_server
    store, _ = make_engine_store(tmp_path)
    archive = Path(shutil.make_archive(str(served / "qv2"), "gztar", store / "tiny" / "adapters" / "qv"))
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    _publish_files(store / "tiny" / "adapters" / "qv", served / "files")
    env = {"LORASERVE_ALLOWED_ADAPTER_URLS": f"{base_url}/"}
    with ServerProcess(["--model-store", str(store)], env=env) as server:
        client = server.client

        def register(name: str, src: str):
            return client.post("/models/tiny/adapters", params={"name": name, "src": src})

        assert register("remote", f"{base_url}/qv2.tar.gz?sig=secret#sha256={sha}").status_code == 200
        described = client.get("/models/tiny/adapters/remote").json()
        assert "secret" not in str(described) and described["src"].endswith("/qv2.tar.gz?…")
        body = {"inputs": "hi", "adapters": "remote", "parameters": {"max_new_tokens": 2}}
        assert client.post("/predictions/tiny", json=body).status_code == 200
        _Store.failures = 2  # two 503s, then the archive: retried with backoff
        assert register("flaky", f"{base_url}/flaky/qv2.tar.gz").status_code == 200
        # unpacked, the archive is kept only where its checksum lets a later fetch be skipped
        kept = [p.name for p in (store / ".loraserve" / "downloads").iterdir()]
        assert kept == [f"{sha}.tar.gz"]

        refusals = {
            "bad-sha": (f"{base_url}/qv2.tar.gz#sha256={'0' * 64}", 400, "sha256"),
            "not-allowed": ("http://localhost:1/qv2.tar.gz", 403, "--allowed-adapter-urls"),
            "redirected": (f"{base_url}/elsewhere/qv2.tar.gz", 403, "allowed URL prefix"),
            "missing": (f"{base_url}/nope.tar.gz", 502, "404"),
            "not-archive": (f"{base_url}/qv2", 400, "archive"),
            "credentials": ("http://user:pw@127.0.0.1:1/qv2.tar.gz", 400, "credentials"),
        }
        for name, (src, status, says) in refusals.items():
            reply = register(name, src)
            assert reply.status_code == status and says in reply.json()["message"], (name, reply.text)
            assert "pw" not in reply.json()["message"]
        manifested = register("manifested", f"{base_url}/files/qv/manifest.json")
        assert manifested.status_code == 200, manifested.text
        assert client.post("/predictions/tiny", json=body | {"adapters": "manifested"}).status_code == 200
        for name, folder, says in (("bad-file", "badsha", "sha256"), ("escaping", "escape", "unsafe path")):
            reply = register(name, f"{base_url}/files/{folder}/manifest.json")
            assert reply.status_code == 400 and says in reply.json()["message"], reply.text
        listed = {a["name"] for a in client.get("/models/tiny/adapters").json()["adapters"]}
        assert listed == {"qv", "remote", "flaky", "manifested"}  # the refused ones registered nothing
        left = [p.name for p in (store / ".loraserve" / "downloads").iterdir()]
        assert left == [f"{sha}.tar.gz"]  # and left no partial or temporary download behind
        assert client.delete("/models/tiny/adapters/remote").status_code == 200
        assert list((store / ".loraserve" / "downloads").iterdir()) == []  # named by nobody now
