"""Adapters from S3, against a real S3 endpoint over HTTP (moto's standalone server, started
here): registered from a folder or an archive, updated when the objects change, refused when
damaged, oversized, missing or outside the allowed prefixes (nothing registered), loaded on
first request by a resolver root (100 concurrent first requests, one fetch), and kept across a
restart. The credentials never appear in a response or the log."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest

from loraserve.testing.server import ServerProcess, free_port
from tests.e2e.helpers import make_engine_store

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

SECRET = "s3cr3t-key-never-shown"
MAX_BYTES = 1_000_000


@pytest.fixture
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIATESTING",
        aws_secret_access_key=SECRET,
    )
    for bucket in ("adapters", "private"):
        client.create_bucket(Bucket=bucket)
    yield client, endpoint
    server.stop()


def _env(endpoint: str, **more: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "AKIATESTING",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "LORASERVE_S3_ENDPOINT_URL": endpoint,
        "LORASERVE_ALLOWED_ADAPTER_URLS": "s3://adapters/",
        "LORASERVE_MAX_ARCHIVE_BYTES": str(MAX_BYTES),
        **more,
    }


def _upload_folder(client, folder: Path, bucket: str, prefix: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _generate(client: httpx.Client, adapter: str) -> httpx.Response:
    body = {"inputs": "hi", "adapters": adapter, "parameters": {"max_new_tokens": 4}}
    return client.post("/predictions/tiny", json=body)


def test_s3_folders_and_archives_are_fetched_checked_and_served(tmp_path, s3):
    from loraserve.testing.tiny import make_peft_adapter

    client, endpoint = s3
    store, base = make_engine_store(tmp_path)
    _upload_folder(client, store / "tiny" / "adapters" / "qv", "adapters", "team/qv")
    archive = shutil.make_archive(str(tmp_path / "qv"), "gztar", store / "tiny" / "adapters" / "qv")
    client.upload_file(archive, "adapters", "packed/qv.tar.gz")
    client.put_object(Bucket="adapters", Key="packed/broken.tar.gz", Body=b"not an archive at all")
    client.put_object(Bucket="adapters", Key="big/adapter_model.safetensors", Body=b"\0" * (MAX_BYTES + 1))
    _upload_folder(client, store / "tiny" / "adapters" / "qv", "private", "qv")
    log = tmp_path / "server.log"
    with ServerProcess(["--model-store", str(store)], env=_env(endpoint), log_path=log) as server:
        api = server.client

        def register(name: str, src: str) -> httpx.Response:
            return api.post("/models/tiny/adapters", params={"name": name, "src": src})

        assert register("from-s3", "s3://adapters/team/qv").status_code == 200
        first = _generate(api, "from-s3")
        assert first.status_code == 200
        assert first.json() == _generate(api, "qv").json()  # the same weights as the local copy
        assert register("packed", "s3://adapters/packed/qv.tar.gz").status_code == 200
        assert _generate(api, "packed").status_code == 200

        # the objects change: an update fetches the new listing into a new directory
        make_peft_adapter(base, tmp_path / "qv-v2", rank=4, seed=7)
        _upload_folder(client, tmp_path / "qv-v2", "adapters", "team/qv")
        updated = api.post("/models/tiny/adapters/from-s3/update", params={"src": "s3://adapters/team/qv"})
        assert updated.status_code == 200, updated.text
        assert api.get("/models/tiny/adapters/from-s3").json()["version"] == 2
        assert _generate(api, "from-s3").json() != first.json()

        refusals = {
            "missing": ("s3://adapters/nothing-here", 400, "does not exist"),
            "private": ("s3://private/qv", 403, "--allowed-adapter-urls"),
            "damaged": ("s3://adapters/packed/broken.tar.gz", 400, "damaged"),
            "oversized": ("s3://adapters/big", 400, "max_archive_bytes"),
            "no-key": ("s3://adapters", 400, "prefix"),
        }
        for name, (src, status, says) in refusals.items():
            reply = register(name, src)
            assert reply.status_code == status and says in reply.json()["message"], (name, reply.text)
            assert SECRET not in reply.text
        listed = {a["name"] for a in api.get("/models/tiny/adapters").json()["adapters"]}
        assert listed == {"qv", "from-s3", "packed"}  # the refused ones registered nothing
        assert SECRET not in api.get("/models/tiny/adapters").text
        extracted = store / ".loraserve" / "extracted" / "tiny"
        assert not [p for p in extracted.iterdir() if p.name.startswith(".")]  # no partial fetch left
    assert SECRET not in log.read_text(errors="replace")


def test_resolver_roots_load_an_adapter_on_its_first_request(tmp_path, s3):
    client, endpoint = s3
    store, _ = make_engine_store(tmp_path)
    _upload_folder(client, store / "tiny" / "adapters" / "qv", "adapters", "lazy/lazy-one")
    local_root = tmp_path / "local-adapters"
    shutil.copytree(store / "tiny" / "adapters" / "qv", local_root / "near-one")
    with (store / "tiny" / "serving.properties").open("a") as props:
        props.write(f"option.adapter_resolvers={local_root}\n")
    env = _env(endpoint, LORASERVE_ADAPTER_RESOLVERS="s3://adapters/lazy")
    log = tmp_path / "server.log"
    with ServerProcess(["--model-store", str(store)], env=env, log_path=log) as server:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as api:
                body = {"inputs": "hi", "adapters": "lazy-one", "parameters": {"max_new_tokens": 2}}
                calls = (api.post("/predictions/tiny", json=body) for _ in range(100))
                replies = await asyncio.gather(*calls)
                return [r.status_code for r in replies]

        assert asyncio.run(burst()) == [200] * 100
        assert log.read_text().count("adapter lazy-one resolved from s3://adapters/lazy/lazy-one") == 1
        described = server.client.get("/models/tiny/adapters/lazy-one").json()
        assert described["origin"] == "resolver"

        assert _generate(server.client, "near-one").status_code == 200  # the model's local root
        chat = {"model": "tiny:near-one", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert server.client.post("/v1/chat/completions", json=chat).status_code == 200
        nobody = _generate(server.client, "nobody")
        assert nobody.status_code == 424  # found under no root: DJL's answer
        assert _generate(server.client, "nobody").status_code == 424  # remembered, not fetched again
    with ServerProcess(["--model-store", str(store)], env=env, log_path=log) as server:
        names = {a["name"] for a in server.client.get("/models/tiny/adapters").json()["adapters"]}
        assert {"lazy-one", "near-one"} <= names  # saved like any registration
    assert SECRET not in log.read_text(errors="replace")
